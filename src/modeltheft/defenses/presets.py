"""Build a defense pipeline from a preset name or a TOML file.

A TOML file holds ``[[stages]]`` tables, each with a ``type`` (a registered stage name) and
that stage's parameters. Unknown types and unknown parameters are errors, never ignored.
"""

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from modeltheft.defenses.base import Pipeline, Stage
from modeltheft.defenses.detection import OodRateMonitor, Prada
from modeltheft.defenses.misinformation import AdaptiveMisinformation
from modeltheft.defenses.output import (
    GaussianNoise,
    HardLabel,
    Normalize,
    RandomHardLabel,
    Rounding,
)
from modeltheft.defenses.perturb import ArgmaxPreservingNoise, ReverseSigmoid, TopK
from modeltheft.defenses.ratelimit import ProbabilisticRateLimit, TokenBucketRateLimit
from modeltheft.defenses.watermark import Watermark
from modeltheft.errors import ConfigError
from modeltheft.registry import build
from modeltheft.tomlfile import read_toml

STAGES: dict[str, type[Stage]] = {
    cls.name: cls
    for cls in (
        ProbabilisticRateLimit,
        TokenBucketRateLimit,
        GaussianNoise,
        Rounding,
        RandomHardLabel,
        HardLabel,
        Normalize,
        OodRateMonitor,
        Prada,
        AdaptiveMisinformation,
        Watermark,
        ReverseSigmoid,
        TopK,
        ArgmaxPreservingNoise,
    )
}


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("modeltheft.defenses") / "presets"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def build_stage(spec: dict[str, Any]) -> Stage:
    """One stage from its TOML table."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"each stage needs a 'type'; got {spec!r}")
    params = dict(spec)
    kind = params.pop("type")
    if not isinstance(kind, str):
        raise ConfigError(f"a stage 'type' must be a string; got {kind!r}")
    return build(STAGES, kind, params, "defense stage")


def pipeline_from_dict(config: dict[str, Any], name: str = "custom") -> Pipeline:
    """A pipeline from parsed TOML."""
    unknown = sorted(set(config) - {"stages"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s) in defense config: {', '.join(unknown)}")
    stages = config.get("stages", [])
    if not isinstance(stages, list):
        raise ConfigError("'stages' must be an array of tables ([[stages]])")
    return Pipeline([build_stage(spec) for spec in stages], name=name)


def load_pipeline(preset_or_path: str | Path) -> Pipeline:
    """A pipeline from a preset name (``none``, ``lab``, …) or the path of a TOML file."""
    text = str(preset_or_path)
    if text in preset_names():
        source = resources.files("modeltheft.defenses") / "presets" / f"{text}.toml"
        return pipeline_from_dict(tomllib.loads(source.read_text()), name=text)
    path = Path(text)
    if not path.is_file():
        raise ConfigError(
            f"defense {text!r} is neither a preset ({', '.join(preset_names())}) nor a TOML file"
        )
    return pipeline_from_dict(read_toml(path), name=path.stem)
