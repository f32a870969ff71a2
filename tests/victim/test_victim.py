import json
from pathlib import Path

import pytest
import skops.io as sio

from modeltheft.errors import ConfigError, ModelIntegrityError
from modeltheft.tasks import get_task
from modeltheft.victim import FAMILIES, load_victim, save_victim, train_victim
from modeltheft.victim.store import file_sha256, metadata_path


def test_default_victim_matches_the_lab_exactly() -> None:
    trained = train_victim()
    assert round(trained.metadata["test_accuracy"], 3) == 0.974
    assert trained.metadata["split"]["n_test"] == 540


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
