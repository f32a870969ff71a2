"""Load any classifier to serve: ours (skops + metadata), a plain skops file, or ONNX.

* A skops file with our metadata JSON beside it: its hash is checked (:func:`load_victim`).
* A skops file without it (``skops.io.dump`` of a model made elsewhere): imported with a
  warning, its SHA-256 recorded in the in-memory metadata and the log.
* An ONNX classifier (any producer): served through onnxruntime
  (:class:`~modeltheft.victim.onnx.OnnxClassifier`).

In every case only trusted types load (skops' defaults and ``TRUSTED_TYPES``); nothing is
unpickled. The task is the one given (``--task``), else the metadata's, else the model's own
schema (:func:`~modeltheft.tasks.task_from_model`); a given task is checked against the model.
"""

import logging
from pathlib import Path

from modeltheft.errors import ModelIntegrityError
from modeltheft.tasks import Task, get_task, task_from_model
from modeltheft.victim.onnx import OnnxClassifier
from modeltheft.victim.store import (
    LoadedVictim,
    file_sha256,
    load_trusted,
    load_victim,
    metadata_path,
    metadata_task,
)

log = logging.getLogger("modeltheft.victim")
ZIP_MAGIC = b"PK\x03\x04"


def load_model(path: Path | str, task: Task | str | None = None) -> LoadedVictim:
    """The classifier in ``path`` (skops or ONNX, told by content) and the task it answers.

    ``task`` (a Task, a built-in name or a TOML path) overrides the task in the metadata and
    is checked against the model (width, classes). Errors are one-line
    :class:`ModelIntegrityError` or :class:`ConfigError`.
    """
    path = Path(path)
    given = get_task(task) if isinstance(task, str | Path) else task
    if not path.is_file():
        raise ModelIntegrityError(f"model file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(4)
    if head == ZIP_MAGIC:
        loaded = _load_skops(path)
    elif path.suffix.lower() == ".skops":
        raise ModelIntegrityError(f"cannot load {path}: not a skops archive (not a zip file)")
    else:
        loaded = _load_onnx(path, given)
    chosen = given if given is not None else metadata_task(loaded.metadata)
    loaded.task = task_from_model(loaded.model, chosen, name=path.stem)
    loaded.metadata.setdefault("task", loaded.task.name)
    return loaded


def _load_skops(path: Path) -> LoadedVictim:
    if metadata_path(path).is_file():
        return load_victim(path)
    digest = file_sha256(path)
    log.warning(
        "%s has no metadata file (%s): importing it as a model made elsewhere, sha256 %s",
        path,
        metadata_path(path).name,
        digest,
    )
    model = load_trusted(path)
    if not hasattr(model, "predict_proba") or not hasattr(model, "classes_"):
        raise ModelIntegrityError(
            f"{path} does not hold a fitted classifier with predict_proba "
            f"(it holds {type(model).__name__})"
        )
    metadata: dict[str, object] = {
        "format": "skops",
        "file": path.name,
        "sha256": digest,
        "estimator": type(model).__name__,
        "imported": True,
    }
    return LoadedVictim(model=model, metadata=metadata, path=path)


def _load_onnx(path: Path, task: Task | None) -> LoadedVictim:
    digest = file_sha256(path)
    model = OnnxClassifier(
        path,
        classes=None,
        n_features=task.n_features if task is not None else None,
        what=f"ONNX model {path}",
    )
    if task is not None and not model.labels_declared and len(task.classes) == len(model.classes_):
        model.use_labels(task.classes)  # the graph says no labels: the task's, in its order
    log.info("loaded ONNX classifier %s (sha256 %s)", path, digest)
    metadata: dict[str, object] = {
        "format": "onnx",
        "file": path.name,
        "sha256": digest,
        "estimator": "onnx",
    }
    return LoadedVictim(model=model, metadata=metadata, path=path)
