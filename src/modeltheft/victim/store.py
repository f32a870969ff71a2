"""Persist models with skops (never pickle) beside a metadata JSON holding the file's hash."""

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skops.io as sio
from sklearn.base import ClassifierMixin

from modeltheft import __version__
from modeltheft.errors import ConfigError, ModelIntegrityError
from modeltheft.tasks import BUILTIN, Task, get_task, task_from_model

log = logging.getLogger("modeltheft.victim")

# Types outside skops' default trust that our model families need; nothing else loads.
TRUSTED_TYPES = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn._loss.link.Interval",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        # Common in plain scikit-learn classifiers made elsewhere (k-nearest neighbours).
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
    }
)


@dataclass
class LoadedVictim:
    """A verified model, its metadata, and the task it answers.

    :func:`~modeltheft.victim.imports.load_model` always sets ``task``; the strict
    :func:`load_victim` sets it when the metadata or the model tell it (None otherwise, e.g.
    for a stolen copy that does not keep its input width).
    """

    model: ClassifierMixin
    metadata: dict[str, object]
    path: Path
    task: Task | None = None


def metadata_task(metadata: dict[str, object]) -> Task | None:
    """The task a model's metadata names: a built-in (with its data), else its saved schema.

    A model trained without the attacker-public rows (``split.name == "holdout"``) gets the
    task's :meth:`~modeltheft.tasks.Task.held_out` view, so its defenses' reference rows are
    the rows it was trained on. Metadata written before tasks existed names the digits data
    set in its split: digits.
    """
    split = metadata.get("split")
    held_out = isinstance(split, dict) and split.get("name") == "holdout"
    name = metadata.get("task")
    if isinstance(name, str) and name in BUILTIN:
        task = get_task(name)
        return task.held_out() if held_out else task
    task_file = metadata.get("task_file")
    if isinstance(task_file, str):
        try:
            task = get_task(task_file)  # the owner's TOML task, with its rows
            return task.held_out() if held_out else task
        except ConfigError as exc:
            log.warning("task file of the model unusable (%s); serving from its saved schema", exc)
    schema = metadata.get("task_schema")
    if isinstance(schema, dict):
        return Task.from_schema(schema)
    legacy = name is None and isinstance(split, dict)
    if legacy and split.get("dataset") == "sklearn.datasets.load_digits":  # type: ignore[union-attr]
        return get_task("digits")
    return None


def metadata_path(model_path: Path) -> Path:
    """Where the metadata JSON of ``model_path`` lives."""
    return model_path.with_name(model_path.name + ".json")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(model: ClassifierMixin, path: Path, metadata: dict[str, object]) -> Path:
    """Write ``model`` to ``path`` (skops) and its metadata with the hash; return the JSON path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        untrusted = set(sio.get_untrusted_types(data=sio.dumps(model))) - TRUSTED_TYPES
    except Exception as exc:  # skops raises many types for objects it cannot serialise
        raise ModelIntegrityError(f"skops cannot save {type(model).__name__}: {exc}") from None
    if untrusted:
        raise ModelIntegrityError(
            f"refusing to save a model with untrusted types: {sorted(untrusted)}"
        )
    sio.dump(model, path)
    record = {
        **metadata,
        "format": "skops",
        "file": path.name,
        "sha256": file_sha256(path),
        "modeltheft_version": __version__,
    }
    meta = metadata_path(path)
    meta.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return meta


save_victim = save_model


def load_trusted(path: Path) -> Any:
    """Load a skops file, refusing any type outside skops' defaults and ``TRUSTED_TYPES``.

    No hash check: for files that have no metadata of ours (a suspected copy found elsewhere).
    """
    try:
        untrusted = set(sio.get_untrusted_types(file=path))
        unknown = untrusted - TRUSTED_TYPES
        if unknown:
            raise ModelIntegrityError(f"{path} holds untrusted types: {sorted(unknown)}")
        return sio.load(path, trusted=sorted(untrusted))
    except ModelIntegrityError:
        raise
    except Exception as exc:  # skops raises many types for a corrupt archive
        raise ModelIntegrityError(f"cannot load {path}: {exc}") from None


def load_victim(path: Path, require_proba: bool = True) -> LoadedVictim:
    """Load a model saved by :func:`save_model`, after checking its hash and its types.

    A victim must give probabilities; a stolen copy (``require_proba=False``) need only predict.
    """
    path = Path(path)
    meta_file = metadata_path(path)
    if not path.is_file():
        raise ModelIntegrityError(f"model file not found: {path}")
    if not meta_file.is_file():
        raise ModelIntegrityError(f"metadata file not found: {meta_file}")
    try:
        metadata = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelIntegrityError(f"metadata file {meta_file} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("sha256"), str):
        raise ModelIntegrityError(f"metadata file {meta_file} has no sha256 field")
    actual = file_sha256(path)
    if actual != metadata["sha256"]:
        raise ModelIntegrityError(
            f"hash mismatch for {path}: metadata says {metadata['sha256'][:12]}…, "
            f"file is {actual[:12]}…"
        )
    model = load_trusted(path)
    if not hasattr(model, "predict") or (require_proba and not hasattr(model, "predict_proba")):
        needed = "predict_proba" if require_proba else "predict"
        raise ModelIntegrityError(f"{path} does not hold a classifier with {needed}")
    try:
        task: Task | None = task_from_model(model, metadata_task(metadata), name=path.stem)
    except ConfigError:
        if require_proba:
            raise
        task = None  # a stolen copy that keeps neither its width nor its classes
    return LoadedVictim(model=model, metadata=metadata, path=path, task=task)
