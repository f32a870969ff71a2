import json
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import RandomForestClassifier

from modeltheft.errors import ConfigError, ModelIntegrityError
from modeltheft.tasks import get_task
from modeltheft.victim import FAMILIES, load_victim, save_victim, train_victim
from modeltheft.victim.store import file_sha256, metadata_path


def test_default_victim_matches_the_lab_exactly() -> None:
    trained = train_victim()
    assert round(trained.metadata["test_accuracy"], 3) == 0.974
    assert trained.metadata["split"]["n_test"] == 540
    assert trained.metadata["task"] == "digits"
    assert trained.metadata["task_schema"]["n_features"] == 64
    # Bit-identical to the lab's forest: the same rows in the same order, the same seed.
    data = get_task("digits").data
    lab = RandomForestClassifier(n_estimators=50, random_state=42).fit(data.X_train, data.y_train)
    assert np.array_equal(trained.model.predict_proba(data.X_eval), lab.predict_proba(data.X_eval))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_saves_and_loads(family: str, tmp_path: Path) -> None:
    trained = train_victim(family)
    assert trained.metadata["test_accuracy"] > 0.9
    path = tmp_path / f"{family}.skops"
    save_victim(trained.model, path, trained.metadata)
    loaded = load_victim(path)
    assert loaded.metadata["family"] == family
    X = get_task("digits").data.X_eval[:20]
    assert (loaded.model.predict_proba(X) == trained.model.predict_proba(X)).all()


def test_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown model family 'xgb'"):
        train_victim("xgb")


def test_tampered_model_is_refused(victim_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "v.skops"
    copy.write_bytes(victim_path.read_bytes() + b"\0")
    metadata_path(copy).write_text(metadata_path(victim_path).read_text())
    with pytest.raises(ModelIntegrityError, match="hash mismatch"):
        load_victim(copy)


def test_missing_metadata_is_refused(victim_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "v.skops"
    copy.write_bytes(victim_path.read_bytes())
    with pytest.raises(ModelIntegrityError, match="metadata file not found"):
        load_victim(copy)


class Sneaky:
    """A type nobody trusts."""

    def predict_proba(self, X):  # pragma: no cover - never loaded
        return X


def test_untrusted_types_are_refused_even_with_a_matching_hash(tmp_path: Path) -> None:
    path = tmp_path / "sneaky.skops"
    sio.dump(Sneaky(), path)
    metadata_path(path).write_text(json.dumps({"sha256": file_sha256(path)}))
    with pytest.raises(ModelIntegrityError, match="untrusted types"):
        load_victim(path)


def test_unsavable_models_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match=r"untrusted types|cannot save"):
        save_victim(Sneaky(), tmp_path / "s.skops", {})
    assert not (tmp_path / "s.skops").exists()


def test_train_on_another_task_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from modeltheft.cli.app import main

    out = tmp_path / "wine.skops"
    assert main(["train", "--task", "wine", "--model", "gbdt", "--out", str(out)]) == 0
    assert "trained gbdt on wine: test accuracy" in capsys.readouterr().out
    metadata = json.loads(metadata_path(out).read_text())
    assert metadata["task"] == "wine" and metadata["task_schema"]["n_features"] == 13
    assert metadata["split"]["n_test"] == len(get_task("wine").data.y_eval)
    loaded = load_victim(out)
    assert loaded.task.name == "wine" and loaded.model.n_features_in_ == 13
    assert main(["train", "--task", "nope", "--out", str(tmp_path / "x.skops")]) == 1
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_holdout_leaves_the_public_rows_out() -> None:
    task = get_task("breast-cancer")
    trained = train_victim("lr", task, holdout=True)
    assert trained.metadata["split"]["n_train"] == len(task.data.holdout)
    legacy = train_victim("rf", split_name="holdout")  # the older spelling, digits
    assert legacy.metadata["split"] == {**legacy.metadata["split"], "name": "holdout"}
    assert legacy.metadata["split"]["n_train"] == 1057
    with pytest.raises(ConfigError, match="unknown split 'x'"):
        train_victim("rf", split_name="x")
