from pathlib import Path

import numpy as np
import pytest

from modeltheft.defenses import DefenseContext, load_pipeline
from modeltheft.defenses.ratelimit import ProbabilisticRateLimit
from modeltheft.errors import ConfigError, RateLimited
from modeltheft.state import MemoryStore


def context(seed: int = 0, client: str = "c") -> DefenseContext:
    return DefenseContext(client_id=client, rng=np.random.default_rng(seed), store=MemoryStore())


def test_first_150_queries_are_never_refused_then_about_80_percent_are() -> None:
    limit = ProbabilisticRateLimit()
    ctx = context()
    for _ in range(150):
        limit.admit(1, ctx)
    refused = 0
    for _ in range(2000):
        try:
            limit.admit(1, ctx)
        except RateLimited as exc:
            refused += 1
            assert exc.retry_after == 1.0
    assert 0.77 < refused / 2000 < 0.83


def test_a_batch_counts_every_row_and_is_refused_whole() -> None:
    ctx = context()
    ProbabilisticRateLimit(free_queries=10, refuse_probability=1.0).admit(10, ctx)
    # Rows 11..15: the limit of 14 lets rows 11-14 through but refuses row 15, so the whole
    # request is refused, and all five rows still count as queries.
    with pytest.raises(RateLimited, match="1 of the 5 queries"):
        ProbabilisticRateLimit(free_queries=14, refuse_probability=1.0).admit(5, ctx)
    assert ctx.store.get("queries:c") == 15


def test_clients_are_counted_separately() -> None:
    store = MemoryStore()
    limit = ProbabilisticRateLimit(free_queries=3, refuse_probability=1.0)
    a = DefenseContext("a", np.random.default_rng(0), store)
    b = DefenseContext("b", np.random.default_rng(0), store)
    limit.admit(3, a)
    limit.admit(3, b)
    with pytest.raises(RateLimited):
        limit.admit(1, a)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[stages]]\ntype = "nope"\n', "unknown defense stage 'nope'"),
        ('[[stages]]\ntype = "rounding"\ndigits = 2\n', "has no parameter digits"),
        ('[[stages]]\ntype = "gaussian_noise"\nsigma = -1.0\n', "sigma must be a number in"),
        ('[[stages]]\ntype = "random_hard_label"\nprobability = 2\n', "probability must be"),
        ("stages = 3\n", "'stages' must be an array"),
        ("extra = 1\n", "unknown top-level key"),
        ("[[stages]\n", "not valid TOML"),
        ("[[stages]]\nsigma = 1\n", "each stage needs a 'type'"),
    ],
)
def test_bad_defense_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "d.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path)


def test_custom_toml_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[[stages]]\ntype = "rounding"\ndecimals = 2\n[[stages]]\ntype = "normalize"\n')
    pipeline = load_pipeline(path)
    assert pipeline.stage_names == ["rounding", "normalize"]
    assert pipeline.name == "mine"


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="neither a preset"):
        load_pipeline("fortress")
