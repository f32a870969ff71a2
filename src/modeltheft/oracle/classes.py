"""Class values to class indices: fixed by a task, or learned from what the target answers.

Oracle answers carry class *indices* into ``oracle.task.classes``. The query log keeps what
the target said (label values, probability columns), and every answer, fresh or replayed, is
mapped here in query order, so a resumed run gets the same indices.

How classes are learned (no ``--task`` and no API description names them):

- **Labels only**: the classes are the label values in the order they were first seen. The
  list is append-only, so an index once given never changes.
- **Probabilities of k columns**: index j is column j; a label names the column its row peaks
  at. While every label seen is an integer equal to its column (or there are no labels), the
  classes are ``0..k-1``, the unnamed columns presumed to be their own index. Otherwise (string
  labels, or integers that are not column numbers) the classes are known once every column is
  named; for a scikit-learn model that is its sorted ``classes_``.

Until two classes are known, the learned task's classes are empty (``task.classes_known``).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from modeltheft.errors import OracleError
from modeltheft.oracle.answers import OracleAnswers

Value = int | str


def class_value(value: Any, row: int) -> Value:
    """A label from an answer as a class value: an int (floats equal to ints too) or a string."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise OracleError(f"label {value!r} of row {row} is not a class label (an integer or a string)")


def _preview(classes: Sequence[Any]) -> str:
    shown = [str(c) for c in classes[:6]]
    return ", ".join(shown) + (", ..." if len(classes) > 6 else "")


class ClassBook:
    """Maps label values and probability columns to class indices, learning them if allowed.

    ``classes`` given: they are fixed (an unknown label is an :class:`OracleError` naming it,
    probabilities must have one column per class). None: learned, see the module docstring;
    ``columns`` is the number of probability columns when the target declares it, and
    ``presume`` False when its labels are known not to be column numbers (strings).
    """

    def __init__(
        self, classes: np.ndarray | None = None, columns: int | None = None, presume: bool = True
    ) -> None:
        self.presume = presume
        self.fixed = classes is not None and len(classes) > 0
        self.values: list[Value] = [] if not self.fixed else list(np.asarray(classes).tolist())
        self.columns = len(self.values) if self.fixed else columns
        self._positions = {(type(v), v): i for i, v in enumerate(self.values)}
        # Learned over probability columns: the observed name of each column, or None.
        self.names: list[Value | None] = [None] * columns if columns else []

    # --- what is known ---------------------------------------------------------------------

    @property
    def _identity(self) -> bool:
        """Every named column is named by its own index (so the others are presumed to be)."""
        return self.presume and all(v is None or v == j for j, v in enumerate(self.names))

    @property
    def classes(self) -> np.ndarray:
        """The class values known so far, in index order (empty while fewer than two)."""
        if self.fixed:
            return np.asarray(self.values)
        if self.columns is not None:
            if self._identity:
                return np.arange(self.columns)
            if any(v is None for v in self.names):
                return np.array([])
            return np.asarray(self.names)
        return np.asarray(self.values) if len(self.values) >= 2 else np.array([])

    def value(self, index: int) -> Value | None:
        """The class value of ``index`` as far as it is known (even before the task's classes
        are complete), None for -1 or a column not named yet."""
        if index < 0:
            return None
        if self.columns is not None and not self.fixed:
            name = self.names[index]
            return index if name is None and self._identity else name
        return self.values[index]

    # --- mapping ---------------------------------------------------------------------------

    def _fixed_index(self, value: Value, row: int) -> int:
        index = self._positions.get((type(value), value))
        if index is not None:
            return index
        raise OracleError(
            f"label {value!r} of row {row} is not one of the classes ({_preview(self.values)})"
        )

    def _column_index(self, value: Value, peak: int | None, row: int) -> int:
        """The column a label names; an unnamed peak column is named by the label."""
        if value in self.names:
            return self.names.index(value)
        k = len(self.names)
        if peak is None:  # a label without probabilities: only a presumed column can hold it
            if isinstance(value, int) and 0 <= value < k and self._identity:
                self.names[value] = value
                return value
            raise OracleError(
                f"label {value!r} of row {row} names none of the {k} probability columns"
            )
        if self.names[peak] is not None:
            raise OracleError(
                f"label {value!r} of row {row} peaks at probability column {peak}, "
                f"which is class {self.names[peak]!r}"
            )
        self.names[peak] = value
        return peak

    def _learned_index(self, value: Value) -> int:
        if value not in self.values:
            self.values.append(value)
        return self.values.index(value)

    def answers(self, records: Sequence[dict[str, Any]]) -> OracleAnswers:
        """Answers (class indices) from log records: ``label`` (a class value, or None for the
        top probability), ``probabilities`` (the target's columns, or None) and ``refused``."""
        n = len(records)
        widths = {
            len(r["probabilities"])
            for r in records
            if not r["refused"] and r.get("probabilities") is not None
        }
        probabilities = None
        if widths:
            if len(widths) > 1:
                raise OracleError(f"probability rows of one answer differ in length: {widths}")
            (k,) = widths
            if self.columns is None:
                if self.values:
                    raise OracleError("the target answered labels only before, probabilities now")
                self.columns, self.names = k, [None] * k
            if k != self.columns:
                raise OracleError(
                    f"probabilities have shape [{n}, {k}], expected [{n}, {self.columns}]"
                )
            probabilities = np.full((n, k), np.nan)
        labels = np.full(n, -1, dtype=int)
        refused = np.array([bool(r["refused"]) for r in records], dtype=bool)
        for i, record in enumerate(records):
            if refused[i]:
                continue
            probs = record.get("probabilities")
            peak = None
            if probs is not None:
                probabilities[i] = probs  # type: ignore[index]
                peak = int(np.argmax(probs))
            label = record.get("label")
            if label is None:
                if peak is None:
                    raise OracleError(
                        f"row {i} of the answer holds neither a label nor probabilities"
                    )
                labels[i] = peak
                continue
            value = class_value(label, i)
            if self.fixed:
                labels[i] = self._fixed_index(value, i)
            elif self.columns is not None:
                labels[i] = self._column_index(value, peak, i)
            else:
                labels[i] = self._learned_index(value)
        return OracleAnswers(labels, probabilities, refused)
