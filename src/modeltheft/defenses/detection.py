"""Per-client extraction detectors: PRADA and an out-of-distribution-rate monitor.

Both keep their state in the store (shared by workers, kept across restarts), raise an alert
when a client's queries stop looking like an honest client's, and can then move the client
to the strict policy (every later answer misinformed) or block it.
"""

import math
import struct
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy import special, stats

from modeltheft.defenses.alerts import ACTIONS, client_status, escalate, raise_alert
from modeltheft.defenses.base import STAGES, Answers, DefenseContext, OutputStage, StageEnv
from modeltheft.defenses.clients import ClientCache
from modeltheft.defenses.keyed import label_prefix, split_label
from modeltheft.defenses.ood import (
    SCALES,
    FeatureSpace,
    KnnScorer,
    auto_scale,
    feature_space,
    knn_scorer,
)
from modeltheft.errors import ConfigError
from modeltheft.registry import InstanceOf, Interval, Options
from modeltheft.state.base import StateStore

RATE = Interval(float, 0, 0.5, closed="right")
"""A small probability: in (0, 0.5]."""
ON_ALERT = Options(*ACTIONS)
REFERENCE = InstanceOf(str, "'task', 'lab', 'holdout' or the path of a .npy file")


def _acted(ctx: DefenseContext, detector: str, action: str) -> bool:
    """This detector already flagged the client and its action is in force: nothing to test."""
    if not ctx.store.get(f"alerted:{detector}:{ctx.client_id}"):
        return False
    return client_status(ctx.store, ctx.client_id) >= ACTIONS[action]


@STAGES.register
class OodRateMonitor(OutputStage):
    """Alert when a client's share of out-of-distribution queries is implausible for an honest one.

    Each query is out of distribution if its k-NN distance to the reference rows (by default
    the task's training rows; distances in the standardised space of
    :mod:`~modeltheft.defenses.ood`) exceeds the quantile ``1 - fpr`` of their leave-one-out
    distances. Honest clients send such queries at
    about ``honest_rate``; the client is flagged once ``P(Binomial(n, honest_rate) >= hits)``
    falls below ``alpha`` after at least ``min_queries`` queries. ``n`` and ``hits`` count
    distinct queries: an exact repeat of an earlier query of the client is not counted.
    """

    name = "ood_monitor"
    paper = (
        "Kariyappa & Qureshi, CVPR 2020 (out-of-distribution queries); per-client monitoring "
        "as in Juuti et al., PRADA, EuroS&P 2019"
    )
    honest_cost = "none unless an honest client's rows are mostly unlike the training rows"
    keeps_argmax = True
    keeps_simplex = True
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "reference": [REFERENCE],
        "scale": [Options(*SCALES)],
        "k": [Interval(int, 1, None)],
        "fpr": [RATE],
        "honest_rate": [RATE],
        "alpha": [RATE],
        "min_queries": [Interval(int, 1, None)],
        "on_alert": [ON_ALERT],
    }

    def __init__(
        self,
        reference: str = "task",
        k: int = 5,
        fpr: float = 0.01,
        honest_rate: float = 0.02,
        alpha: float = 1e-6,
        min_queries: int = 10,
        on_alert: str = "strict",
        scale: str = "auto",
    ) -> None:
        self.reference = reference
        self.k = k
        self.fpr = fpr
        self.honest_rate = honest_rate
        self.alpha = alpha
        self.min_queries = min_queries
        self.on_alert = on_alert
        self.scale = scale
        self.validate_params()
        self._scorer: KnnScorer | None = None
        self.threshold: float | None = None

    def setup(self, env: StageEnv) -> None:
        self._scorer = knn_scorer(self.reference, self.k, env.task, self.scale)
        self.threshold = self._scorer.threshold(self.fpr)

    def out_of_distribution(self, X: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows counted as out of distribution."""
        if self._scorer is None or self.threshold is None:
            raise ConfigError(f"stage {self.name!r} was used before setup")
        return self._scorer.score(X) > self.threshold

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        if ctx.inputs is None or len(ctx.inputs) == 0:
            return answers
        # Only queries the client never sent before count: repeating one odd digit (a page
        # refreshing) is not evidence of extraction, and teaches a thief nothing new.
        # Canonical rows: a twin of an earlier query (-0.0, float32, within the task's
        # precision) is that query again, and scores as it does.
        digests = [digest.hex() for digest in ctx.canonical_digests]
        new = np.array(ctx.store.add_new_members(f"ood:seen:{ctx.client_id}", digests))
        if not new.any():
            return answers
        hits_now = int(self.out_of_distribution(ctx.canonical)[new].sum())
        n = ctx.store.incr(f"ood:n:{ctx.client_id}", int(new.sum()))
        hits = ctx.store.incr(f"ood:hits:{ctx.client_id}", hits_now)
        if n < self.min_queries or _acted(ctx, self.name, self.on_alert):
            return answers
        # P(Binomial(n, p) >= hits) through the ufunc: scipy.stats' wrapper costs ~50 µs.
        p_value = float(special.bdtrc(hits - 1, n, self.honest_rate))
        if p_value >= self.alpha:
            return answers
        reason = f"{hits} of {n} queries out of distribution (p = {p_value:.2g})"
        raise_alert(ctx, self.name, reason, self.on_alert)
        return escalate(answers, ctx, self.on_alert)


_RECORD = struct.Struct(">BBd8s")  # class, flags, distance, digest of the row
_WIDE_RECORD = struct.Struct(">IBd8s")  # the same for a class index of 256 or more
_OLD_RECORD = struct.Struct(">BBd")  # before repeats were recognised: no digest


def _record(label: int, flags: int, distance: float, digest: bytes) -> bytes:
    return (_RECORD if label < 256 else _WIDE_RECORD).pack(label, flags, distance, digest)


JOINED, REPEAT = 1, 2


class _Rows:
    """A class's growing set: rows appended in place (amortised O(1)), read as one array."""

    def __init__(self, width: int) -> None:
        self._data = np.empty((8, width))
        self.n = 0

    def add(self, row: np.ndarray) -> None:
        if self.n == len(self._data):
            self._data = np.concatenate([self._data, np.empty_like(self._data)])
        self._data[self.n] = row
        self.n += 1

    def nearest(self, row: np.ndarray) -> float:
        """Squared L2 distance from ``row`` to the nearest row of the set."""
        diff = self._data[: self.n] - row
        return float(np.einsum("ij,ij->i", diff, diff).min())


@dataclass(frozen=True)
class _Threshold:
    """Running mean and variance (Welford) of a growing set's distances, and its threshold."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    value: float = 0.0

    def plus(self, distance: float) -> "_Threshold":
        n = self.n + 1
        delta = distance - self.mean
        mean = self.mean + delta / n
        m2 = self.m2 + delta * (distance - mean)
        value = self.value
        if n > 1:
            value = max(value, mean - math.sqrt(max(m2 / n, 0.0)))
        return _Threshold(n, mean, m2, value)


@dataclass
class _PradaClient:
    """A worker's copy of one client's PRADA state, rebuilt from the store's lists in order."""

    growing: dict[int, _Rows] = field(default_factory=dict)
    thresholds: dict[int, _Threshold] = field(default_factory=dict)
    distances: list[float] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)
    n_rows: int = 0
    n_records: int = 0
    tested_at: int = 0
    """How many distances D held when this worker last ran the test."""

    def fold(self, item: bytes) -> None:
        """One stored record into D, the thresholds and the set of rows seen."""
        if len(item) == _OLD_RECORD.size:
            label, flags, distance = _OLD_RECORD.unpack(item)
        else:
            form = _WIDE_RECORD if len(item) == _WIDE_RECORD.size else _RECORD
            label, flags, distance, digest = form.unpack(item)
            self.seen.add(digest)
        if flags & REPEAT:
            return
        if distance > 0:
            self.distances.append(distance)
        if flags & JOINED:
            self.thresholds[label] = self.thresholds.get(label, _Threshold()).plus(distance)


@STAGES.register
class Prada(OutputStage):
    """PRADA: Shapiro–Wilk normality of each client's minimum inter-query distances.

    Distances are L2 in a standardised space (``scale``, as the OOD scorer's in
    :mod:`~modeltheft.defenses.ood`): ``"auto"`` keeps digits' pixels as they are (one shared
    [0, 1] range) and divides a table's columns by their standard deviation over the task's
    training rows, so a column in thousands does not drown the others. A task without
    training rows falls back to the declared ranges when every feature has finite bounds,
    and to raw distances otherwise (PRADA itself needs no reference rows).

    For every query, the L2 distance to the nearest earlier query of the same predicted class
    (the class's *growing set*) joins the client's distance set D; the query joins the growing
    set if that distance exceeds the class threshold ``mean - std`` of the growing set's
    distances. Once D holds ``min_queries`` distances, a Shapiro–Wilk statistic W < ``delta``
    raises an alert; the test runs again each time ``test_every`` new distances arrived.
    Exact repeats of any earlier query of the client are left out of D (and distances of 0):
    they tell a thief nothing new, and honest clients do repeat themselves. The per-client
    state grows in place (no copies per request), so a request costs the distance search
    over its class's growing set, not the client's whole history.
    """

    name = "prada"
    paper = "Juuti et al., PRADA: Protecting Against DNN Model Stealing Attacks, IEEE EuroS&P 2019"
    honest_cost = "none unless a false alarm moves an honest client to the strict policy"
    keeps_argmax = True
    keeps_simplex = True

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "delta": [Interval(float, 0, 1, closed="right")],
        "min_queries": [Interval(int, 3, None)],
        "window": [Interval(int, 3, None)],
        "on_alert": [ON_ALERT],
        "test_every": [Interval(int, 1, None)],
        "scale": [Options(*SCALES)],
    }

    def __init__(
        self,
        delta: float = 0.75,
        min_queries: int = 20,
        window: int = 5000,
        on_alert: str = "strict",
        test_every: int = 10,
        scale: str = "auto",
    ) -> None:
        self.delta = delta
        self.min_queries = min_queries
        self.window = window
        self.on_alert = on_alert
        self.test_every = test_every
        self.scale = scale
        self.validate_params()
        if window < min_queries:
            raise ConfigError(
                f"defense stage 'prada': window must be >= min_queries ({min_queries}), "
                f"got {window!r}"
            )
        self._clients: ClientCache[_PradaClient] = ClientCache()
        self._space: FeatureSpace | None = None

    def setup(self, env: StageEnv) -> None:
        task = env.task
        scale = self.scale
        if task.data is None and scale == "auto" and auto_scale(task) != "range":
            scale = "range" if task.bounded else "none"  # nothing to fit a scale on
        rows = None if task.data is None else np.asarray(task.data.X_train)
        space = feature_space(scale, task, rows)
        self._space = None if space.identity else space

    def _sync(self, store: StateStore, client_id: str) -> _PradaClient:
        """Read what this worker has not seen yet (its own appends included), in store order."""
        state = self._clients.get(client_id)
        if state is None:  # new here, or dropped: read back from the store below
            state = self._clients.put(client_id, _PradaClient())
        for item in store.items(f"prada:{client_id}:rows", state.n_rows):
            label, payload = split_label(item)
            row = np.frombuffer(payload, dtype=np.float64)
            state.growing.setdefault(label, _Rows(len(row))).add(row)
            state.n_rows += 1
        for item in store.items(f"prada:{client_id}:d", state.n_records):
            state.fold(item)
            state.n_records += 1
        return state

    def statistic(self, client_id: str, store: StateStore) -> float | None:
        """The client's current Shapiro–Wilk W (None until ``min_queries`` distances)."""
        return self._w(self._sync(store, client_id))

    def _w(self, state: _PradaClient) -> float | None:
        distances = state.distances[-self.window :]
        if len(distances) < self.min_queries:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(stats.shapiro(distances).statistic)

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        if ctx.inputs is None or len(ctx.inputs) == 0:
            return answers
        state = self._sync(ctx.store, ctx.client_id)
        # The cache itself only ever changes by reading the store, so that records other
        # workers append between our read and our write are never skipped: this batch's own
        # effects live in the overlays below until they are read back.
        pending: dict[int, list[np.ndarray]] = {}
        thresholds: dict[int, _Threshold] = {}
        seen: set[bytes] = set()
        new_rows: list[bytes] = []
        records: list[bytes] = []
        labels = np.argmax(answers.original, axis=1)
        inputs = ctx.inputs if self._space is None else self._space(ctx.inputs)
        for x, label, digest in zip(inputs, labels, ctx.digests, strict=True):
            label = int(label)
            row = np.asarray(x, dtype=np.float64)
            if digest in state.seen or digest in seen:
                # An exact repeat of an earlier query tells a thief nothing new; honest
                # clients repeat themselves, and counting repeats would skew D.
                records.append(_record(label, REPEAT, 0.0, digest))
                continue
            seen.add(digest)
            group, extra = state.growing.get(label), pending.get(label, [])
            if group is None and not extra:
                distance, joins, counted = 0.0, True, False
            else:
                squared = group.nearest(row) if group is not None else math.inf
                for other in extra:
                    squared = min(squared, float(np.dot(other - row, other - row)))
                distance = math.sqrt(squared)
                threshold = thresholds.get(label) or state.thresholds.get(label, _Threshold())
                joins = counted = distance > threshold.value
                if counted:
                    thresholds[label] = threshold.plus(distance)
            if joins:
                pending.setdefault(label, []).append(row)
                new_rows.append(label_prefix(label) + row.tobytes())
            records.append(_record(label, JOINED if counted else 0, distance, digest))
        if new_rows:
            ctx.store.append(f"prada:{ctx.client_id}:rows", new_rows)
        ctx.store.append(f"prada:{ctx.client_id}:d", records)
        state = self._sync(ctx.store, ctx.client_id)
        if _acted(ctx, self.name, self.on_alert):
            return answers
        if state.tested_at and len(state.distances) - state.tested_at < self.test_every:
            return answers  # the test costs ~150 µs: run it once per test_every new distances
        state.tested_at = len(state.distances)
        w = self._w(state)  # just synced: no third read of the store
        if w is None or w >= self.delta:
            return answers
        reason = f"Shapiro-Wilk W = {w:.3f} < {self.delta} over {len(state.distances)} distances"
        raise_alert(ctx, self.name, reason, self.on_alert)
        return escalate(answers, ctx, self.on_alert)
