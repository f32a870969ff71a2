"""ONNX: export a fitted classifier, and serve any ONNX classifier through onnxruntime.

:class:`OnnxClassifier` wraps a session so that it looks like a scikit-learn classifier
(``predict_proba``, ``predict``, ``classes_``, ``n_features_in_``). Its outputs are found by
type, not by name: the probabilities are a float tensor ``[N, k]`` or a ZipMap
(``seq(map(int64|string, float))``), the labels an int64 or string tensor ``[N]``. Class
labels come from the ZipMap's keys or the classifier node's ``classlabels_*`` attributes,
else they are ``0 … k-1``.
"""

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.errors import ConfigError, ModelIntegrityError

PROBABILITY_TENSORS = ("tensor(float)", "tensor(double)")
LABEL_TENSORS = ("tensor(int64)", "tensor(string)")
ZIPMAPS = ("seq(map(int64,tensor(float)))", "seq(map(string,tensor(float)))")
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}
LABEL_ATTRIBUTES = ("classlabels_ints", "classlabels_int64s", "classlabels_strings")


def export_onnx(model: ClassifierMixin, path: Path) -> Path:
    """Write ``model`` as ONNX to ``path``; raises ModelIntegrityError if it cannot be converted.

    The input is ``[N, n_features_in_]`` float32; probabilities are a plain tensor (no ZipMap).
    """
    from skl2onnx import to_onnx

    width = getattr(model, "n_features_in_", None)
    if width is None:
        raise ModelIntegrityError(f"cannot convert {type(model).__name__}: no n_features_in_")
    sample = np.zeros((1, int(width)), dtype=np.float32)
    options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
    try:
        onnx_model = to_onnx(model, sample, options=options, target_opset=17)
    except Exception as exc:  # skl2onnx raises many types for unsupported models
        raise ModelIntegrityError(f"cannot convert {type(model).__name__} to ONNX: {exc}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_model.SerializeToString())
    return path


def single_thread_session(source: Path | bytes) -> Any:
    """An onnxruntime CPU session on one thread (a request is tiny; threads only contend)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_predict(path: Path, X: np.ndarray) -> np.ndarray:
    """Labels an ONNX classifier file predicts for ``X`` (single-threaded session)."""
    session = single_thread_session(path)
    name = session.get_inputs()[0].name
    labels = session.run(None, {name: np.asarray(X, dtype=np.float32)})[0]
    return np.asarray(labels).ravel()


def _graph_labels(source: bytes) -> np.ndarray | None:
    """Class labels declared in the graph (ZipMap keys or a classifier node's attributes)."""
    import onnx

    try:
        graph = onnx.load_from_string(source).graph
    except Exception:  # onnxruntime already accepted it; no labels is not an error
        return None
    found: dict[str, np.ndarray] = {}
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name in LABEL_ATTRIBUTES and node.op_type not in found:
                if attribute.strings:
                    found[node.op_type] = np.array([s.decode() for s in attribute.strings])
                elif attribute.ints:
                    found[node.op_type] = np.array(list(attribute.ints), dtype=np.int64)
    # ZipMap keys are what the probabilities are keyed by: they win over a classifier node.
    return found.get("ZipMap", next(iter(found.values()), None))


class OnnxClassifier:
    """A scikit-learn-like classifier over an onnxruntime session (thread-safe ``run``).

    ``source`` is an ONNX file or its bytes; ``classes`` overrides the labels read from the
    graph; ``n_features`` gives the width when the input's is dynamic.
    """

    def __init__(
        self,
        source: Path | bytes,
        classes: np.ndarray | None = None,
        n_features: int | None = None,
        what: str = "ONNX model",
    ) -> None:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        try:
            self._session = single_thread_session(data)
        except Exception as exc:  # onnxruntime raises its own types for a bad graph
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelIntegrityError(
                f"cannot load {what}: not a valid ONNX model ({first})"
            ) from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].type not in INPUT_TYPES:
            shown = ", ".join(f"{i.name}: {i.type}" for i in inputs)
            raise ModelIntegrityError(
                f"{what} must take one float tensor [N, d] as input, it takes {shown}"
            )
        self._input = inputs[0].name
        self._dtype = INPUT_TYPES[inputs[0].type]
        self.n_features_in_ = self._width(inputs[0].shape, n_features, what)
        self._proba, self._zipmap, self._label = self._outputs(what)
        keys = self._zipmap_keys()
        declared = np.asarray(classes) if classes is not None else _graph_labels(data)
        if declared is None and keys is not None:
            declared = np.asarray(keys)
        k = len(keys) if keys is not None else self._n_probabilities()
        if declared is not None and len(declared) != k:
            raise ModelIntegrityError(
                f"{what} declares {len(declared)} class labels but gives {k} probabilities"
            )
        self.labels_declared = declared is not None
        """Whether the graph (or the caller) said the class labels (else they are 0 … k-1)."""
        self.classes_ = declared if declared is not None else np.arange(k)
        self._keys = self.classes_.tolist()
        if keys is not None and set(self._keys) != set(keys):
            raise ModelIntegrityError(
                f"{what}: its ZipMap keys {keys[:5]} are not its class labels {self._keys[:5]}"
            )

    @staticmethod
    def _width(shape: list[Any], n_features: int | None, what: str) -> int:
        if len(shape) != 2:
            raise ModelIntegrityError(f"{what} input must be [N, d], its shape is {shape}")
        width = shape[1]
        if isinstance(width, int) and width > 0:
            if n_features is not None and n_features != width:
                raise ConfigError(f"{what} takes {width} features, the task has {n_features}")
            return width
        if n_features is None:
            raise ConfigError(
                f"{what} has a dynamic input width ({width!r}); give the task with --task"
            )
        return int(n_features)

    def _outputs(self, what: str) -> tuple[str, bool, str | None]:
        outputs = self._session.get_outputs()
        proba = [o for o in outputs if o.type in PROBABILITY_TENSORS and len(o.shape) == 2]
        zipmap = [o for o in outputs if o.type in ZIPMAPS]
        labels = [o for o in outputs if o.type in LABEL_TENSORS and len(o.shape) == 1]
        label = labels[0].name if labels else None
        if proba:
            return proba[0].name, False, label
        if zipmap:
            return zipmap[0].name, True, label
        shown = ", ".join(f"{o.name}: {o.type} {o.shape}" for o in outputs)
        raise ModelIntegrityError(
            f"{what} has no probability output (a float tensor [N, k] or a ZipMap); "
            f"its outputs are {shown}"
        )

    def _answer_zero_row(self) -> Any:
        row = np.zeros((1, self.n_features_in_), dtype=self._dtype)
        try:
            return self._session.run([self._proba], {self._input: row})[0]
        except Exception as exc:  # onnxruntime raises its own types
            raise ModelIntegrityError(f"the ONNX model fails on a zero row: {exc}") from None

    def _zipmap_keys(self) -> list[Any] | None:
        """The ZipMap's keys in its order (None without a ZipMap)."""
        return list(self._answer_zero_row()[0]) if self._zipmap else None

    def _n_probabilities(self) -> int:
        """k, from the probability tensor's shape or from one answer on a zero row."""
        (output,) = [o for o in self._session.get_outputs() if o.name == self._proba]
        if isinstance(output.shape[1], int):
            return output.shape[1]
        return int(np.asarray(self._answer_zero_row()).shape[1])

    def use_labels(self, classes: np.ndarray) -> None:
        """Name the classes of a model whose graph does not (a task's labels, in order)."""
        if self.labels_declared or len(classes) != len(self.classes_):
            raise ConfigError(
                f"cannot relabel the ONNX model's {len(self.classes_)} classes as {len(classes)}"
            )
        self.classes_ = np.asarray(classes)
        self._keys = self.classes_.tolist()
        self.labels_declared = True
        self._label = None  # its label output says 0 … k-1: predict by the argmax instead

    def _run(self, names: list[str], X: np.ndarray) -> list[Any]:
        rows = np.ascontiguousarray(X, dtype=self._dtype)
        if rows.ndim != 2 or rows.shape[1] != self.n_features_in_:
            raise ConfigError(
                f"X has {rows.shape[-1] if rows.ndim else 0} features, "
                f"the ONNX model expects {self.n_features_in_}"
            )
        return self._session.run(names, {self._input: rows})

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of every row (float64, columns in ``classes_`` order)."""
        (answer,) = self._run([self._proba], X)
        if self._zipmap:
            keys = self._keys
            return np.array([[row[key] for key in keys] for row in answer], dtype=np.float64)
        return np.asarray(answer, dtype=np.float64)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels (class values): the model's label output if it has one, else the argmax."""
        if self._label is not None:
            (labels,) = self._run([self._label], X)
            labels = np.asarray(labels).ravel()
            return labels.astype(str) if self.classes_.dtype.kind == "U" else labels
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
