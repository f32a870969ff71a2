"""The CLI through its entry point: real commands, structured checks, one-line errors."""

import importlib.util
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response

from modeltheft.cli.app import main
from modeltheft.service.runner import BackgroundServer
from tests.conftest import KEYS


def test_train_writes_model_and_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lr.skops"
    assert main(["train", "--model", "lr", "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "lr.skops.json").read_text())
    assert meta["family"] == "lr" and meta["test_accuracy"] > 0.9 and len(meta["sha256"]) == 64
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "xgb", "--out", "x.skops"], "unknown model family"),
        (["train"], "--out"),
        (["frobnicate"], "No such command"),
        (["serve", "--defense", "fortress"], "fortress"),
        (["serve", "--inference", "gpu", "--state", "memory://"], "inference must be"),
        (["attack", "--target", "ftp://x", "--api-key", "k", "--out", "o"], "http"),
        (["demo", "--repeats", "0"], "repeats"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELTHEFT_API_KEYS", "a:b")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from modeltheft import __version__

    assert main(["--version"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == __version__ and captured.err == ""


def test_serve_without_keys_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELTHEFT_API_KEYS", raising=False)
    assert main(["serve"]) == 1
    assert "no API keys configured" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "missing/model.skops"], "model file not found: missing/model.skops"),
        (["--task", "chess"], "unknown task 'chess'"),
        (["--defense", "fortress"], "defense 'fortress' is neither a preset"),
        (["--state", "postgres://db/x"], "unknown state URL scheme"),
        (["--state", "memory://x"], "memory state takes no path"),
        (["--state", "sqlite:///notes.txt"], "cannot use notes.txt as a state database"),
        (["--state", "redis://127.0.0.1:9/0"], "cannot use Redis at redis://127.0.0.1:9/0"),
        (["--upstream", "http://127.0.0.1:9"], "needs --model-name"),
        (["--reference", "rows.npy"], "--reference goes with --upstream"),
    ],
)
def test_serve_names_a_bad_input_before_missing_keys(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("MODELTHEFT_API_KEYS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    assert main(["serve", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert "API keys" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # no state file was created
    assert (tmp_path / "notes.txt").read_text() == "not a database\n" * 100


def test_keys_new_prints_a_key_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "carol"]) == 0
    out = capsys.readouterr().out
    key = out.split("shown once, give it to the client): ")[1].split()[0]
    line = out.split("keys-file line: ")[1].split()[0]
    assert line.startswith("carol:sha256$") and key not in line


@pytest.mark.parametrize("name", ["caf\u00e9", "a b", "x:y", "evil\r\nINFO forged", ""])
def test_keys_new_refuses_a_name_key_loading_would_refuse(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "new", name]) == 1
    err = capsys.readouterr().err.strip()
    assert "client name" in err and len(err.splitlines()) == 1


def test_attack_saves_results_and_resumes(
    live_server: Callable[..., BackgroundServer], tmp_path: Path, victim_path: Path
) -> None:
    server = live_server("none")
    out = tmp_path / "attack"
    argv = [
        "attack",
        "--target",
        server.url,
        "--api-key",
        KEYS["alice"],
        "--budget",
        "80",
        "--seed",
        "3",
        "--out",
        str(out),
        "--victim",
        str(victim_path),
    ]
    assert main(argv) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["metrics"]["sent"] == 80 and first["metrics"]["answered"] == 80
    assert 0 < first["metrics"]["fidelity"] <= 1
    assert first["spec"]["strategy"] == "owasp-synthetic" and first["seed"] == 3
    assert (out / "stolen.skops").exists() and (out / "stolen.skops.json").exists()
    # the query log: a line naming its target, then the 80 answers
    assert (
        len((out / "queries.jsonl").read_text().splitlines()) == 81
    )  # a target line, then 80 answers
    assert main(argv) == 0
    second = json.loads((out / "results.json").read_text())
    assert second["metrics"]["reused_from_log"] == 80
    assert second["metrics"]["stolen_accuracy"] == first["metrics"]["stolen_accuracy"]
    assert len((out / "queries.jsonl").read_text().splitlines()) == 81


def test_demo_writes_results_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert (
        main(["demo", "--repeats", "2", "--budget", "200", "--out", str(out), "--seed", "5"]) == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["victim"] == {"model": "rf", "test_accuracy": pytest.approx(0.974, abs=5e-4)}
    names = [s["name"] for s in results["scenarios"]]
    assert names == ["no_defense", "lab_defenses"]
    plain, defended = results["scenarios"]
    assert plain["query_success_rate"] == 1.0 and plain["answered"] == 200
    assert defended["query_success_rate"] < 1.0
    assert plain["stolen_accuracy_std"] is not None and len(plain["runs"]) == 2
    assert results["repeats"] == 2 and results["seed"] == 5
    honest = results["honest_client"]
    assert honest["no_defense"]["answered"] == 540
    assert round(honest["no_defense"]["accuracy_of_answers"], 3) == 0.974
    assert 150 <= honest["lab_defenses"]["answered"] < 540
    for name in ("accuracy.png", "query_success.png", "predictions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "0.974" in printed and "Stolen (lab defenses)" in printed


def test_attack_outputs_curve_onnx_and_per_class(
    live_server: Callable[..., BackgroundServer], tmp_path: Path, victim_path: Path
) -> None:
    import numpy as np

    from modeltheft.tasks import digits_task
    from modeltheft.victim import load_victim
    from modeltheft.victim.onnx import onnx_predict

    server = live_server("none")
    out = tmp_path / "soft"
    argv = [
        "attack",
        "--target",
        server.url,
        "--api-key",
        KEYS["alice"],
        "--budget",
        "120",
        "--strategy",
        "uniform",
        "--label-mode",
        "soft",
        "--substitute",
        "lr",
        "--checkpoints",
        "60,120",
        "--batch-size",
        "30",
        "--out",
        str(out),
        "--victim",
        str(victim_path),
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["spec"]["label_mode"] == "soft" and results["spec"]["checkpoints"] == [60, 120]
    assert [row["spent"] for row in results["budget_curve"]] == [60, 120]
    assert results["budget_curve"][-1]["fidelity"] == results["metrics"]["fidelity"]
    assert results["per_class"]["against"] == "victim"
    assert set(results["per_class"]["agreement"]) == {str(c) for c in range(10)}
    header = (out / "budget_curve.csv").read_text().splitlines()[0]
    assert header == "spent,answered,accuracy,fidelity"
    assert (out / "budget_curve.png").read_bytes()[:4] == b"\x89PNG"
    stolen = load_victim(out / "stolen.skops").model
    X = digits_task().data.X_eval
    assert np.array_equal(onnx_predict(out / "stolen.onnx", X), stolen.predict(X))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label-mode", "fuzzy"], "unknown label mode"),
        (["--param", "novalue"], "key=value"),
        (["--strategy", "uniform", "--param", "pool=x"], "has no parameter pool"),
        (["--checkpoints", "10,abc"], "comma-separated integers"),
        (["--checkpoints", "5000"], "checkpoints must lie in"),
        (["--substitute", "xgb"], "unknown substitute"),
    ],
)
def test_bad_attack_options_fail_before_any_query(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = [
        "attack",
        "--target",
        "http://127.0.0.1:9",
        "--api-key",
        "k",
        "--out",
        str(tmp_path / "x"),
        *extra,
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x" / "queries.jsonl").exists()


@pytest.fixture
def counted_server(
    make_app: Callable[..., FastAPI],
) -> Iterator[tuple[BackgroundServer, list[str]]]:
    """A live server that records the method and path of every request it gets."""
    app = make_app("none")
    seen: list[str] = []

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        seen.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    with BackgroundServer(app) as server:
        yield server, seen


@pytest.mark.parametrize(
    ("extra", "message", "allowed"),
    [
        (["--budget", "5"], "budget 5 is too small: substitute 'lr' needs at least 51", set()),
        (
            ["--budget", "40", "--substitute", "equation-solver", "--label-mode", "soft"],
            "needs at least 65 answers (64 features)",
            {"GET /v1/model"},  # the width comes from the metadata, which costs no query
        ),
    ],
)
def test_attack_refuses_a_budget_too_small_before_any_query(
    counted_server: tuple[BackgroundServer, list[str]],
    extra: list[str],
    message: str,
    allowed: set[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    server, seen = counted_server
    out = tmp_path / "o"
    argv = ["attack", "--target", server.url, "--api-key", KEYS["alice"], "--out", str(out)]
    assert main([*argv, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert set(seen) <= allowed, seen
    assert not (out / "queries.jsonl").exists()


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="PyTorch is installed")
def test_attack_with_cnn_without_pytorch_fails_before_any_query(
    counted_server: tuple[BackgroundServer, list[str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    server, seen = counted_server
    out = tmp_path / "o"
    argv = ["attack", "--target", server.url, "--api-key", KEYS["alice"], "--out", str(out)]
    assert main([*argv, "--substitute", "cnn", "--budget", "80"]) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install 'modeltheft[cnn]' (torch==2.13.0)" in err and len(err.splitlines()) == 1
    assert seen == [] and not (out / "queries.jsonl").exists()


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Help printed 200 columns wide: rich cuts a word longer than its column."""
    monkeypatch.setenv("COLUMNS", "200")


def _help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """A command's help on one line: the table's borders dropped, wrapped lines joined."""
    assert main([*argv, "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    return " ".join(" ".join(line.strip(" │╭╮╰╯─").split()) for line in lines)


def _registered() -> dict[str, list[str]]:
    from modeltheft.attacks.labels import LABEL_MODES
    from modeltheft.attacks.recipes import STRATEGIES
    from modeltheft.attacks.sources import SOURCES
    from modeltheft.attacks.substitutes import SUBSTITUTES
    from modeltheft.defenses import preset_names
    from modeltheft.oracle import PROTOCOLS
    from modeltheft.tasks import BUILTIN
    from modeltheft.victim.train import FAMILIES

    return {
        "strategy": STRATEGIES.names(),
        "source": SOURCES.names(),
        "substitute": SUBSTITUTES.names(),
        "label mode": list(LABEL_MODES),
        "protocol": PROTOCOLS.names(),
        "task": list(BUILTIN),
        "family": FAMILIES.names(),
        "preset": preset_names(),
    }


@pytest.mark.parametrize(
    ("argv", "listed"),
    [
        (
            ["attack"],
            [
                ("Choices:", "protocol"),
                ("Choices:", "strategy"),
                ("Sources (pool=):", "source"),
                ("Choices:", "substitute"),
                ("Choices:", "label mode"),
                ("Built-in:", "task"),
            ],
        ),
        (["train"], [("Choices:", "family"), ("Built-in:", "task")]),
        (
            ["serve"],
            [("Built-in:", "task"), ("Presets:", "preset"), ("Choices:", "protocol")],
        ),
        (["demo"], [("Built-in:", "task")]),
        (["watermark", "verify"], [("Choices:", "protocol")]),
    ],
)
def test_help_lists_the_registered_names(
    argv: list[str], listed: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help_text(argv, capsys)
    names = _registered()
    for label, kind in listed:
        assert f"{label} {', '.join(names[kind])}" in text, (kind, text)


def test_attack_help_says_cnn_needs_its_extra(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help_text(["attack"], capsys)
    assert "cnn" in _registered()["substitute"]
    assert "the cnn substitute needs PyTorch: pip install 'modeltheft[cnn]' (torch==2.13.0)" in text
    assert main(["attack", "--help"]) == 0  # a second help from the same process: listed once
    assert capsys.readouterr().out.count("Choices: cnn,") == 1


def test_help_shows_a_bracketed_url_form(capsys: pytest.CaptureFixture[str], wide: None) -> None:
    # rich markup used to swallow "[user:password@]" in the help
    assert "redis://[user:password@]host:port/db" in _help_text(["serve"], capsys)
    assert "redis://[user:password@]host:port/db" in _help_text(["audit"], capsys)


def test_the_cli_reads_the_registries_only_for_help() -> None:
    import subprocess
    import sys

    code = (
        "import sys, modeltheft.cli.app; "
        "print(any(m in sys.modules for m in ('modeltheft.attacks.recipes', "
        "'modeltheft.attacks.substitutes', 'modeltheft.oracle', 'modeltheft.victim.train')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # serve's workers import this module too
