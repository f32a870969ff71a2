"""``attack --task/--eval-data`` and ``demo --task``: measured on the task's rows, named."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modeltheft.cli.app import main
from modeltheft.service import Settings, create_app
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import get_task
from modeltheft.victim import load_victim, save_victim, train_victim
from tests.conftest import KEYS


def _attack(url: str, out: Path, *extra: str) -> list[str]:
    return [
        "attack",
        "--target",
        url,
        "--api-key",
        KEYS["alice"],
        "--budget",
        "60",
        "--strategy",
        "uniform",
        "--batch-size",
        "20",
        "--out",
        str(out),
        *extra,
    ]


def test_attack_measures_on_eval_data_from_a_csv_file(
    live_server: Callable[..., BackgroundServer],
    tmp_path: Path,
    victim_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = get_task("digits").data
    assert data is not None
    X, y = data.X_eval[::5], data.y_eval[::5]  # 108 of the 540 test digits
    header = ",".join([*(f"pixel_{r}_{c}" for r in range(8) for c in range(8)), "digit"])
    lines = [header] + [
        ",".join([*(str(float(v)) for v in row), str(label)])
        for row, label in zip(X, y, strict=True)
    ]
    (tmp_path / "eval.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "csv"
    argv = _attack(
        live_server("none").url,
        out,
        "--eval-data",
        str(tmp_path / "eval.csv"),
        "--label-column",
        "digit",
        "--victim",
        str(victim_path),
    )
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["name"] == "digits" and results["task"]["kind"] == "image"
    assert results["evaluation"] == {
        "source": str(tmp_path / "eval.csv"),
        "rows": 108,
        "labels": True,
    }
    stolen = load_victim(out / "stolen.skops").model.predict(X)
    truth = load_victim(victim_path).model.predict(X)
    assert results["metrics"]["fidelity"] == pytest.approx(np.mean(stolen == truth))
    assert results["metrics"]["stolen_accuracy"] == pytest.approx(np.mean(stolen == y))
    assert results["spec"]["eval_data"] == str(tmp_path / "eval.csv")
    printed = " ".join(capsys.readouterr().out.split())
    assert "task 'digits'" in printed and "108 evaluation rows" in printed


def test_attack_with_features_only_measures_fidelity_only(
    live_server: Callable[..., BackgroundServer], tmp_path: Path, victim_path: Path
) -> None:
    data = get_task("digits").data
    assert data is not None
    np.save(tmp_path / "rows.npy", data.X_eval[:50])
    server = live_server("none")
    with_victim = tmp_path / "fidelity"
    argv = _attack(server.url, with_victim, "--eval-data", str(tmp_path / "rows.npy"))
    assert main([*argv, "--victim", str(victim_path)]) == 0
    results = json.loads((with_victim / "results.json").read_text())
    assert results["metrics"]["stolen_accuracy"] is None
    assert 0 <= results["metrics"]["fidelity"] <= 1
    assert results["evaluation"]["labels"] is False and results["evaluation"]["rows"] == 50
    assert set(results["budget_curve"][-1]) == {"spent", "answered", "fidelity"}
    nothing = tmp_path / "nothing"
    assert main(_attack(server.url, nothing, "--eval-data", str(tmp_path / "rows.npy"))) == 0
    results = json.loads((nothing / "results.json").read_text())
    assert results["metrics"]["fidelity"] is None and results["metrics"]["stolen_accuracy"] is None
    assert results["per_class"] is None


def test_eval_data_of_the_wrong_width_is_one_line(
    live_server: Callable[..., BackgroundServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "narrow.npy", np.zeros((5, 30)))
    argv = _attack(
        live_server("none").url, tmp_path / "x", "--eval-data", str(tmp_path / "narrow.npy")
    )
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "shape (n, 64)" in err and len(err.splitlines()) == 1


def test_attack_with_task_digits_names_it(
    live_server: Callable[..., BackgroundServer], tmp_path: Path, victim_path: Path
) -> None:
    out = tmp_path / "named"
    argv = _attack(live_server("none").url, out, "--task", "digits", "--victim", str(victim_path))
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["spec"]["task"] == "digits" and results["evaluation"]["rows"] == 540


@pytest.mark.parametrize(("name", "rows"), [("breast-cancer", 171), ("wine", 54), ("iris", 45)])
def test_each_tabular_task_is_trained_served_attacked_and_measured(
    name: str, rows: int, tmp_path: Path
) -> None:
    """train → serve → attack over HTTP → fidelity on the task's own evaluation rows."""
    trained = train_victim("rf", task=name)
    path = tmp_path / f"{name}.skops"
    save_victim(trained.model, path, trained.metadata)
    settings = Settings(keys=KeyRing.from_pairs(KEYS), model_path=path, defense="none", seed=1)
    server = BackgroundServer(create_app(settings)).start()
    try:
        out = tmp_path / name
        argv = _attack(server.url, out, "--task", name, "--victim", str(path))
        assert main([*argv, "--budget", "300", "--batch-size", "50"]) == 0
    finally:
        server.stop()
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["name"] == name and results["task"]["kind"] == "tabular"
    assert results["evaluation"]["rows"] == rows
    data = get_task(name).data
    assert data is not None
    answers = load_victim(path).model.predict(data.X_eval)
    classes = np.unique(answers)
    majority = max(np.mean(answers == c) for c in classes)  # what a constant copy would get
    assert majority < results["metrics"]["fidelity"] <= 1
    assert set(results["per_class"]["agreement"]) == {str(c) for c in get_task(name).classes}
    assert np.array(results["confusion"]["matrix"]).sum() == rows


def test_demo_on_breast_cancer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--task",
        "breast-cancer",
        "--repeats",
        "1",
        "--budget",
        "300",  # 60 uniform queries in breast-cancer's bounds all got the same label
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["name"] == "breast-cancer" and results["task"]["kind"] == "tabular"
    assert results["spec"]["attack"] == "uniform"
    assert results["honest_client"]["no_defense"]["sent"] == 171
    assert set(results["agreement"]) == {"no_defense", "lab_defenses"}
    for name in ("accuracy.png", "query_success.png", "agreement.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "predictions.png").exists()
    printed = " ".join(capsys.readouterr().out.split())
    assert "'uniform'" in printed and "breast-cancer" in printed
