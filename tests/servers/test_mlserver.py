"""A real MLServer 1.7.1 (mlserver-sklearn) on loopback, as the target of `attack` and of
`watermark verify` over the Open Inference Protocol v2.

The server runs from ``.venv-mlserver`` (see :mod:`tests.servers.real` and conftest.py) and
serves the session's digits victim and a thief's copy, saved with joblib into tmp by the tests
themselves (the only model files it loads).
"""

from collections.abc import Callable
from pathlib import Path

import pytest
from sklearn.linear_model import LogisticRegression

from modeltheft.cli.app import main
from modeltheft.service.runner import BackgroundServer
from modeltheft.victim import LoadedVictim
from tests.conftest import KEYS, noise_thief
from tests.servers.real import MLServer, same_attack_as_ours


@pytest.fixture(scope="module")
def watermarked(
    tmp_path_factory: pytest.TempPathFactory, victim: LoadedVictim
) -> tuple[Path, LogisticRegression]:
    """Watermark records of a thief (300 noise queries through `recommended` on SQLite) and
    the copy it trained on those answers."""
    db = tmp_path_factory.mktemp("watermarked") / "state.db"
    X, labels = noise_thief(victim.model, db)
    return db, LogisticRegression(max_iter=1000).fit(X, labels)


@pytest.fixture(scope="module")
def mlserver(digits_mlserver: MLServer) -> str:
    """The base URL of the session's MLServer (see conftest.py)."""
    return digits_mlserver.url


@pytest.mark.parametrize(
    ("model", "label_mode"), [("digits", "hard"), ("digits", "soft"), ("digits-proba", "soft")]
)
def test_attack_over_oip_v2_gets_what_it_gets_from_our_server(
    mlserver: str,
    live_server: Callable[..., BackgroundServer],
    victim_path: Path,
    tmp_path: Path,
    model: str,
    label_mode: str,
) -> None:
    """The same attack, same seed, against MLServer and against our own `serve --defense none`
    with the same model: the same fidelity (±0.02). Soft labels really are probabilities."""
    target = ["--target", mlserver, "--protocol", "oip-v2", "--model-name", model]
    ours = live_server("none").url
    same_attack_as_ours(tmp_path, "mlserver", target, ours, KEYS["alice"], victim_path, label_mode)


def test_watermark_verify_over_oip_v2(
    digits_mlserver: MLServer,
    watermarked: tuple[Path, LogisticRegression],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The victim served by MLServer never saw the watermarked answers: no evidence; the
    thief's copy, loaded into the same MLServer, is a copy."""
    db, copy = watermarked
    digits_mlserver.add("copy", copy)
    mlserver = digits_mlserver.url
    argv = ["watermark", "verify", "--state", f"sqlite:///{db}", "--suspect", mlserver]
    argv += ["--protocol", "oip-v2", "--model-name"]
    assert main([*argv, "digits"]) == 0
    assert "suspect shows no evidence of copying" in capsys.readouterr().out
    assert main([*argv, "copy"]) == 0
    assert "suspect is a copy" in capsys.readouterr().out
