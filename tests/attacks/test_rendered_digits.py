import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from modeltheft.attacks.sources.rendered_digits import RenderedDigits, default_fonts
from modeltheft.attacks.strategies import QueryHistory, make_strategy
from modeltheft.errors import ConfigError
from modeltheft.tasks import digits_task


def test_rendered_digits_are_registered() -> None:
    strategy = make_strategy("rendered-digits", max_rotation=10, fonts="DejaVuSans,cmtt10")
    assert isinstance(strategy.source, RenderedDigits)  # a random selection over the source
    assert strategy.name == "rendered-digits" and strategy.paper


@pytest.mark.parametrize("n", [0, 1, 25])
def test_rows_are_optdigits_block_counts(n: int) -> None:
    rows = make_strategy("rendered-digits").propose(n, np.random.default_rng(0), QueryHistory())
    assert rows.shape == (n, 64)
    assert ((rows >= 0) & (rows <= 1)).all()
    assert np.array_equal(rows * 16, np.round(rows * 16))
    if n:
        assert (rows.sum(axis=1) > 0).all()  # every row holds ink


def test_a_seed_fixes_the_rows_and_seeds_differ() -> None:
    strategy = make_strategy("rendered-digits")
    a = strategy.propose(20, np.random.default_rng(5), QueryHistory())
    b = strategy.propose(20, np.random.default_rng(5), QueryHistory())
    c = strategy.propose(20, np.random.default_rng(6), QueryHistory())
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_rows_do_not_depend_on_the_batch_size() -> None:
    strategy = make_strategy("rendered-digits")
    whole = strategy.propose(12, np.random.default_rng(2), QueryHistory())
    rng = np.random.default_rng(2)
    parts = np.vstack([strategy.propose(n, rng, QueryHistory()) for n in (5, 7)])
    assert np.array_equal(whole, parts)


def test_every_option_path_draws_digits() -> None:
    for options in (
        {"hand_share": 0.0, "pen_share": 0.0},
        {"hand_share": 0.0, "pen_share": 1.0, "fonts": ["DejaVuSerif-Italic"]},
        {"hand_share": 1.0, "elastic": False, "proportion_jitter": 0.0},
        {"max_rotation": 0, "max_shear": 0, "elastic_alpha": 0},
    ):
        rows, digits = RenderedDigits(**options).render(10, np.random.default_rng(1))
        assert rows.shape == (10, 64) and (rows.sum(axis=1) > 0).all()
        assert set(digits) <= set(range(10))


def test_default_fonts_are_matplotlib_fonts_with_digits() -> None:
    stems = {path.stem for path in default_fonts()}
    assert {"DejaVuSans", "DejaVuSansMono-Bold", "cmtt10"} <= stems
    # No digits (symbol fonts, fallback boxes) or TeX code points that are not digits.
    assert not stems & {"LastResortHE-Regular", "DejaVuSansDisplay", "STIXSizOneSymReg"}
    assert not stems & {"cmex10", "cmsy10"}


def test_a_forest_trained_on_real_digits_recognizes_rendered_ones() -> None:
    split = digits_task().data
    forest = RandomForestClassifier(n_estimators=50, random_state=42)
    forest.fit(split.X_train, split.y_train)
    rows, digits = RenderedDigits().render(300, np.random.default_rng(0))
    assert np.mean(forest.predict(rows) == digits) > 0.5
    assert np.bincount(digits, minlength=10).min() > 10  # digits are drawn uniformly


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_rotation": -1.0}, "max_rotation"),
        ({"max_shear": float("nan")}, "max_shear"),
        ({"elastic": "yes"}, "elastic"),
        ({"elastic_sigma": 0}, "elastic_sigma"),
        ({"ink": 2}, "ink"),
        ({"pen_share": 1.5}, "pen_share"),
        ({"hand_share": True}, "hand_share"),
        ({"fonts": []}, "fonts"),
        ({"fonts": ["NoSuchFont"]}, "NoSuchFont"),
        ({"fonts": ["cmex10"]}, "cmex10"),
        ({"fonts": ["LastResortHE-Regular"]}, "LastResortHE-Regular"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        strategy = make_strategy("rendered-digits", **options)
        strategy.propose(3, np.random.default_rng(0), QueryHistory())


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_rotation"):
        make_strategy("rendered-digits", rotation=10)
