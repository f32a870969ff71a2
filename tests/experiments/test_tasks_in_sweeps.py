"""``task = ...`` in sweep specs: validated early, part of the id (except digits), measured on
the task's own evaluation rows."""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from modeltheft.errors import ConfigError
from modeltheft.experiments.run import run_task
from modeltheft.experiments.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "name": "small",
    "seed": 5,
    "budgets": [100],
    "defenses": ["none"],
    "attacks": [{"name": "uniform", "strategy": "uniform", "substitute": "mlp", "batch_size": 50}],
}


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("mars", "unknown task 'mars'"),
        (3, "task must be a task name"),
        ([], "task must be a task name"),
        (["wine", "wine"], "unique"),
        ("missing.toml", "not found"),
    ],
)
def test_a_bad_task_is_a_one_line_config_error(task: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(SMALL | {"task": task})


def test_digits_runs_keep_their_ids_and_tasks_are_a_grid_axis() -> None:
    digits = parse_spec(SMALL).tasks()
    assert [r.task for r in digits] == ["digits"]
    content = asdict(digits[0])
    del content["task"]  # the id of a digits run is the hash it had before tasks existed
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    assert digits[0].id == hashlib.sha256(text.encode()).hexdigest()[:16]
    both = parse_spec(SMALL | {"task": ["digits", "wine"], "seeds": 2}).tasks()
    assert [(r.task, r.seed_index) for r in both] == [
        ("digits", 0),
        ("digits", 1),
        ("wine", 0),
        ("wine", 1),
    ]
    assert both[0].id == digits[0].id and len({r.id for r in both}) == 4
    assert both[2].describe()["task"] == "wine"
    assert parse_spec(SMALL | {"task": "wine"}).tasks()[0].id == both[2].id


def test_a_task_file_is_found_beside_the_spec(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    rows = [f"{a},{b},{int(a > 0)}" for a, b in X]
    (tmp_path / "rows.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "mine.toml").write_text(
        'label = "label"\nbounds = "train"\n[data]\ntrain = "rows.csv"\n'
    )
    spec = tmp_path / "spec.toml"
    spec.write_text('task = "mine.toml"\n[[attacks]]\nstrategy = "uniform"\n')
    (run,) = load_spec(spec).tasks()
    assert run.task == str((tmp_path / "mine.toml").resolve())


def test_an_image_only_attack_on_a_tabular_task_fails_when_the_spec_is_read() -> None:
    attack = {"name": "lab", "strategy": "owasp-synthetic"}
    with pytest.raises(ConfigError, match="owasp-synthetic"):
        parse_spec(SMALL | {"task": "wine", "attacks": [attack]})


def test_the_tabular_example_is_breast_cancer_and_wine() -> None:
    runs = load_spec(ROOT / "examples" / "tabular.toml").tasks()
    assert len(runs) == 32 and {r.task for r in runs} == {"breast-cancer", "wine"}


def test_a_wine_run_is_measured_on_wines_evaluation_rows() -> None:
    (run,) = parse_spec(SMALL | {"task": "wine"}).tasks()
    record = run_task(run)
    assert record["status"] == "ok", record["error"]
    assert record["task"]["task"] == "wine"
    assert record["task_info"] == {
        "name": "wine",
        "kind": "tabular",
        "n_features": 13,
        "classes": [0, 1, 2],
        "image_shape": None,
        "eval_rows": 54,
    }
    metrics = record["metrics"]
    assert "samples" not in metrics and 0 <= metrics["fidelity"] <= 1
    assert metrics["answered"] == 100 and metrics["honest_refused"] == 0
    assert set(metrics["per_class"]) == {"0", "1", "2"}
    matrix = np.array(metrics["confusion"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 54
    assert np.trace(matrix) / 54 == pytest.approx(metrics["fidelity"])
    assert run_task(run)["metrics"] == metrics  # a pure function of the run
