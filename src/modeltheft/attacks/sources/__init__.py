"""Sources: where candidate queries come from, registered by name."""

from modeltheft.attacks.base import Source
from modeltheft.attacks.sources.natural_patches import NaturalPatchesSource
from modeltheft.attacks.sources.owasp_synthetic import OwaspSynthetic
from modeltheft.attacks.sources.public import PublicData, PublicRows, Synthetic
from modeltheft.attacks.sources.rendered_digits import RenderedDigits
from modeltheft.attacks.sources.uniform import GeneralPosition, Uniform
from modeltheft.registry import Registry

SOURCES: Registry[Source] = Registry("source")
for _source in (
    Uniform,
    PublicData,
    Synthetic,
    GeneralPosition,
    RenderedDigits,
    OwaspSynthetic,
    NaturalPatchesSource,
):
    SOURCES.register(_source)

__all__ = ["SOURCES", "PublicRows", "Source"]
