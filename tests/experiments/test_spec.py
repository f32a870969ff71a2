"""Sweep specs, run determinism and the results store."""

from pathlib import Path

import pytest

from modeltheft.errors import ConfigError
from modeltheft.experiments.results import ResultsStore
from modeltheft.experiments.run import run_task
from modeltheft.experiments.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "name": "tiny",
    "seed": 3,
    "seeds": 2,
    "budgets": [100],
    "defenses": ["none", "recommended"],
    "attacks": [{"name": "lab", "strategy": "owasp-synthetic", "batch_size": 50}],
}


def test_example_grid_is_the_200_run_grid_with_stable_unique_ids() -> None:
    spec = load_spec(ROOT / "examples" / "grid.toml")
    tasks = spec.tasks()
    assert len(tasks) == 200
    assert len({t.id for t in tasks}) == 200
    assert [t.id for t in load_spec(ROOT / "examples" / "grid.toml").tasks()] == [
        t.id for t in tasks
    ]
    jacobian = [t for t in tasks if t.attack.strategy == "jacobian"]
    assert jacobian and all(t.attack.uses_public_data for t in jacobian)


def test_a_defense_file_is_part_of_the_run_id(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text('[[stages]]\ntype = "rounding"\ndecimals = 1\n')
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'defenses = ["mine.toml"]\n[[attacks]]\nstrategy = "uniform"\n'  # relative to the spec
    )
    first = load_spec(spec).tasks()[0]
    (tmp_path / "mine.toml").write_text('[[stages]]\ntype = "rounding"\ndecimals = 2\n')
    second = load_spec(spec).tasks()[0]
    assert first.defense.name == "mine" and first.id != second.id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown key"),
        ({"victims": ["xgb"]}, "unknown victim"),
        ({"attacks": []}, "at least one"),
        ({"attacks": [{"strategy": "telepathy"}]}, "telepathy"),
        ({"attacks": [{"strategy": "uniform", "wings": 2}]}, "wings"),
        ({"attacks": [{"strategy": "active", "params": {"pool": "moon"}}]}, "moon"),
        ({"attacks": [{"strategy": "natural-patches", "params": {"policy": "moon"}}]}, "moon"),
        ({"defenses": ["fortress"]}, "fortress"),
        ({"defenses": ["none", "none"]}, "unique"),
        ({"seeds": 0}, "seeds"),
        ({"budgets": []}, "budgets"),
        ({"attacks": [{"strategy": "uniform", "labels": "fuzzy"}]}, "fuzzy"),
    ],
)
def test_bad_specs_are_config_errors(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(TINY | change)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_spec(tmp_path / "bad.toml")


def test_a_run_is_a_pure_function_of_its_task() -> None:
    tasks = parse_spec(TINY).tasks()
    first = run_task(tasks[-1])
    again = run_task(tasks[-1])
    assert first["status"] == "ok" and first["metrics"] == again["metrics"]
    other = run_task(tasks[-2])  # same defense, other seed
    assert other["metrics"]["curve"] != first["metrics"]["curve"]
    # recommended watermarks and flags the lab's thief; its copy carries the evidence
    assert first["task"]["defense"]["name"] == "recommended"
    # (the loop cuts batches at the curve's checkpoints: the first request has 20 rows)
    assert first["metrics"]["flagged_after"] == 20 and first["metrics"]["watermark_p"] < 1e-6
    assert first["metrics"]["watermark_p_independent"] > 0.01
    assert first["metrics"]["honest_accuracy"] == pytest.approx(0.974, abs=0.001)


def test_a_failed_run_is_recorded_with_its_error() -> None:
    task = parse_spec(TINY | {"budgets": [20]}).tasks()[0]  # below the 51 answers a fit needs
    record = run_task(task)
    assert record["status"] == "failed" and "answer" in record["error"]


def test_results_store_repairs_a_torn_line_and_keeps_the_latest(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "run")
    store.append({"id": "a", "status": "failed"})
    store.append({"id": "b", "status": "ok"})
    with store.path.open("a") as handle:
        handle.write('{"id": "c", "sta')  # killed mid-write
    store = ResultsStore(tmp_path / "run")
    assert store.finished() == {"b"}
    store.append({"id": "a", "status": "ok"})
    assert [r["id"] for r in store.records()] == ["a", "b"]
    assert store.finished() == {"a", "b"}
    store.path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ConfigError, match=":2"):
        store.records()
