"""Named attacks: a source composed with a selector, each citing its paper.

As TextAttack composes its recipes, but as plain registered functions (no ``eval`` of
strings): ``make_strategy("active", pool="synthetic", n_rows=20, seed_rows=20)`` builds the
ActiveThief selector over a Gaussian fit to 20 of the attacker's rows, asking those rows first.
Every parameter is checked when the recipe is built, and what a recipe needs of the task
(8×8 images, bounds, attacker-public rows) is checked before the first query.
"""

import inspect
from collections.abc import Callable
from typing import Any

from modeltheft.attacks.base import Strategy
from modeltheft.attacks.selectors import SELECTORS
from modeltheft.attacks.sources import SOURCES
from modeltheft.attacks.sources.natural_patches import NaturalPatches
from modeltheft.attacks.sources.public import ARRAY_OR_PATH, PATH
from modeltheft.errors import ConfigError
from modeltheft.registry import Interval, Options, Registry

STRATEGIES: Registry[Strategy] = Registry("strategy")

Recipe = Callable[..., Strategy]


def recipe(
    name: str, paper: str, constraints: dict[str, list[Any]] | None = None
) -> Callable[[Recipe], Recipe]:
    """Register a function that builds a strategy as the recipe ``name``."""

    def register(build: Recipe) -> Recipe:
        def named(*args: Any, **params: Any) -> Strategy:
            strategy = build(*args, **params)
            strategy.name = name  # type: ignore[misc] # messages name the recipe
            strategy.paper = paper  # type: ignore[misc]
            return strategy

        named.__signature__ = inspect.signature(build)  # type: ignore[attr-defined]
        named.__doc__ = build.__doc__
        named.name = name  # type: ignore[attr-defined]
        named.paper = paper  # type: ignore[attr-defined]
        named._parameter_constraints = constraints or {}  # type: ignore[attr-defined]
        STRATEGIES.register(named, name=name)
        return named

    return register


def _random(source: str, params: dict[str, Any]) -> Strategy:
    return SELECTORS.build("random", {"source": SOURCES.build(source, params)})


@recipe("owasp-synthetic", "OWASP ML05:2023 Model Theft lab (random synthetic queries)")
def owasp_synthetic(blob_probability: float = 0.7, radius: float = 3.0) -> Strategy:
    """The lab's noise-plus-blob 8×8 images."""
    return _random("owasp-synthetic", {"blob_probability": blob_probability, "radius": radius})


@recipe(
    "uniform",
    "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016",
)
def uniform() -> Strategy:
    """Rows uniform within the task's bounds (schema only)."""
    return _random("uniform", {})


@recipe(
    "rendered-digits",
    "Data-free task-knowledge synthetic queries (Papernot et al. 2017; Orekondy et al. 2019) "
    "with optdigits preprocessing (Alpaydin & Kaynak 1998)",
)
def rendered_digits(**params: Any) -> Strategy:
    """Digits drawn from fonts and strokes, distorted, preprocessed like optdigits."""
    return _random("rendered-digits", params)


@recipe(
    "natural-patches",
    "Orekondy, Schiele & Fritz, Knockoff Nets: Stealing Functionality of Black-Box Models, "
    "CVPR 2019",
)
def natural_patches(
    policy: str = "random", n_arms: int = 20, alpha: float = 0.1, reward: str = "all"
) -> Strategy:
    """Photo patches as 8×8 digits; random or Knockoff's gradient bandit over their clusters."""
    strategy = NaturalPatches(policy=policy, n_arms=n_arms, alpha=alpha, reward=reward)
    strategy.validate_params()
    return strategy


@recipe(
    "public-data",
    "Orekondy, Schiele & Fritz, Knockoff Nets: Stealing Functionality of Black-Box Models, "
    "CVPR 2019 (the transfer set: the attacker's own unlabeled rows)",
)
def public_data(n_rows: int | None = None, path: str | None = None) -> Strategy:
    """The attacker's own rows (the task's public rows or ``path``), each asked once."""
    return _random("public-data", {"n_rows": n_rows, "path": path})


@recipe(
    "synthetic",
    "Papernot et al., Practical Black-Box Attacks against Machine Learning, AsiaCCS 2017 "
    "(synthetic queries grown from a few real rows)",
)
def synthetic(
    mode: str = "gaussian",
    n_rows: int | None = None,
    path: str | None = None,
    spread: float = 1.5,
    log: bool = True,
) -> Strategy:
    """Rows sampled like the attacker's own (a shrunk Gaussian fit or per-feature marginals)."""
    params = {"mode": mode, "n_rows": n_rows, "path": path, "spread": spread, "log": log}
    return _random("synthetic", params)


@recipe(
    "equation-solving",
    "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016",
)
def equation_solving(scale: float | None = None, path: str | None = None) -> Strategy:
    """Points in general position: with the ``equation-solver`` substitute and soft labels,
    d + 1 of them recover a binary or multiclass logistic model exactly."""
    return _random("general-position", {"scale": scale, "path": path})


@recipe(
    "active",
    "Pal et al., ActiveThief: Model Extraction Using Active Learning and Unannotated Public "
    "Data, AAAI 2020",
    {
        "pool": [Options(*SOURCES.names())],
        "seed_digits": [None, Interval(int, 0, None)],
        "seed_path": [None, PATH],
    },
)
def active(
    pool: str = "rendered-digits",
    pool_size: int = 5000,
    shortlist: float = 4,
    seed_rows: int = 0,
    seed_digits: int | None = None,
    seed_path: str | None = None,
    **pool_params: Any,
) -> Strategy:
    """The most uncertain, most diverse candidates of a pool from any source; ``seed_rows``
    of the attacker's own rows first (``seed_digits`` is its old name). Other parameters go
    to the pool's source (``pool=synthetic n_rows=20``)."""
    if seed_digits is not None:
        if seed_rows:
            raise ConfigError("give seed_rows or its old name seed_digits, not both")
        seed_rows = seed_digits
    source = SOURCES.build(pool, pool_params)
    params = {"pool_size": pool_size, "shortlist": shortlist, "seed_rows": seed_rows}
    return SELECTORS.build("active", {"source": source, "seed_path": seed_path, **params})


@recipe(
    "jacobian",
    "Papernot et al., Practical Black-Box Attacks against Machine Learning, AsiaCCS 2017",
    {"seed_X": [None, ARRAY_OR_PATH]},
)
def jacobian(
    seed_size: int = 10,
    step: float = 0.1,
    tau: int = 3,
    seed_X: Any = None,
    target: str = "label",
) -> Strategy:
    """Seed rows (the attacker's own, or ``seed_X``) grown by Jacobian-based augmentation."""
    params = {"seed_size": seed_size, "step": step, "tau": tau, "seed_X": seed_X}
    return SELECTORS.build("jacobian", {**params, "target": target})


def make_strategy(name: str, **params: Any) -> Strategy:
    """A strategy by its recipe name, with keyword parameters checked against the recipe."""
    return STRATEGIES.build(name, params)
