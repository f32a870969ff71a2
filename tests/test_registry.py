"""The one registry: unknown names and parameters, and declarative constraints."""

from typing import ClassVar

import pytest

from modeltheft.errors import ConfigError
from modeltheft.registry import BOOL, Interval, Options, Plugin, Registry


class Gaussian(Plugin):
    name = "gaussian"
    kind = "source"
    _parameter_constraints: ClassVar[dict] = {
        "sigma": [Interval(float, 0, None, closed="left")],
        "n": [Interval(int, 1, None), None],
        "mode": [Options("fit", "bounds")],
        "clip": [BOOL],
    }

    def __init__(
        self, sigma: float = 1.0, n: int | None = None, mode: str = "fit", clip: bool = True
    ):
        self.sigma = sigma
        self.n = n
        self.mode = mode
        self.clip = clip


def test_registry_builds_and_validates() -> None:
    sources: Registry[Gaussian] = Registry("source")
    sources.register(Gaussian)
    assert sources.build("gaussian", {"sigma": 2}).sigma == 2
    assert sources.build("gaussian", {"n": None}).n is None
    with pytest.raises(ConfigError, match=r"sigma must be a number in \[0, inf\), got -1.0"):
        sources.build("gaussian", {"sigma": -1.0})
    with pytest.raises(ConfigError, match=r"n must be an integer in .* or None, got 1.5"):
        sources.build("gaussian", {"n": 1.5})
    with pytest.raises(ConfigError, match="clip must be a bool, got 1"):
        sources.build("gaussian", {"clip": 1})
    with pytest.raises(ConfigError, match="mode must be one of 'fit', 'bounds', got 'x'"):
        sources.build("gaussian", {"mode": "x"})
    with pytest.raises(ConfigError, match="has no parameter colour"):
        sources.build("gaussian", {"colour": 1})
    with pytest.raises(ConfigError, match="unknown source 'normal'; choose one of gaussian"):
        sources.build("normal", {})


def test_booleans_are_not_numbers() -> None:
    assert not Interval(int, 0, None).check(True)
    assert Interval(float, 0, 1, closed="neither").check(0.5)
    assert not Interval(float, 0, 1, closed="neither").check(1.0)


def test_factories_register_by_name() -> None:
    families: Registry[dict] = Registry("model family")
    families.register(lambda seed=0: {"seed": seed}, name="rf")
    assert families.build("rf", {"seed": 3}) == {"seed": 3}
    with pytest.raises(TypeError, match="registered twice"):
        families.register(lambda: 1, name="rf")
