"""Per-client extraction detectors: PRADA and an out-of-distribution-rate monitor.

Both keep their state in the store (shared by workers, kept across restarts), raise an alert
when a client's queries stop looking like an honest client's, and can then move the client
to the strict policy (every later answer misinformed) or block it.
"""

import math
import warnings
from typing import ClassVar

import numpy as np
from scipy import special, stats

from modeltheft.defenses.alerts import ACTIONS, client_status, escalate, raise_alert
from modeltheft.defenses.base import (
    STAGES,
    Answers,
    DefenseContext,
    OutputStage,
    StageEnv,
    generation,
    generations,
    served_key,
)
from modeltheft.defenses.clients import ClientCache
from modeltheft.defenses.ood import (
    SCALES,
    FeatureSpace,
    KnnScorer,
    auto_scale,
    feature_space,
    knn_scorer,
)
from modeltheft.defenses.prada_state import (
    JOINED,
    REPEAT,
    Base,
    PradaClient,
    Threshold,
    oldest_to_drop,
    read_rows,
    record,
)
from modeltheft.defenses.rowpack import pack
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
    distinct queries: an exact repeat of an earlier query of the client is not counted (one
    of the last :data:`~modeltheft.defenses.base.SEEN_SPAN` to twice as many queries: the
    rows seen are kept one set per span, the two newest read).
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

    def forget(self, client_id: str, store: StateStore) -> None:
        """Delete the client's counts and rows seen (an idle client's eviction)."""
        current = generation(store.get(served_key(client_id)))
        sets = [self._seen(client_id, g) for g in range(max(0, current - 2), current + 1)]
        store.delete([*sets, f"ood:n:{client_id}", f"ood:hits:{client_id}"])

    @staticmethod
    def _seen(client_id: str, generation: int) -> str:
        """The set of rows counted in one generation (:data:`~.base.SEEN_SPAN` queries)."""
        return f"ood:seen:{client_id}" + (f":{generation}" if generation else "")

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
        # The rows of this span and the one before are remembered (base.SEEN_SPAN).
        digests = ctx.canonical_hex
        current, stale = generations(ctx.served_before, len(digests))
        added = ctx.store.add_new_members(self._seen(ctx.client_id, current), digests)
        new = np.array(added, dtype=bool) if any(added) else None  # most requests: a repeat
        if current and new is not None:
            earlier = ctx.store.has_members(self._seen(ctx.client_id, current - 1), digests)
            new &= ~np.array(earlier, dtype=bool)
        if stale is not None:
            ctx.store.delete([self._seen(ctx.client_id, stale)])
        if new is None or not new.any():
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
    raises an alert over the last ``window`` distances; the test runs again each time
    ``test_every`` new distances arrived. Exact repeats of an earlier query of the client are
    left out of D (and distances of 0): they tell a thief nothing new, and honest clients do
    repeat themselves.

    Bounded state (issue 14), per client, in the store and in a worker's memory: the records
    of the last ``window`` to ``2 * window`` queries (D and the repeats are taken from those:
    an older row sent again counts as new) and the growing sets' last ``max_rows`` to
    ``2 * max_rows`` rows (plus one request's), all classes together; the thresholds keep
    counting every distance ever (a 40-byte summary per class when a window moves). Rows are
    stored one deflated item per request (:mod:`~modeltheft.defenses.rowpack`).
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
        "max_rows": [Interval(int, 1, None)],
    }

    def __init__(
        self,
        delta: float = 0.75,
        min_queries: int = 20,
        window: int = 5000,
        on_alert: str = "strict",
        test_every: int = 10,
        scale: str = "auto",
        max_rows: int = 2000,
    ) -> None:
        self.delta = delta
        self.min_queries = min_queries
        self.window = window
        self.on_alert = on_alert
        self.test_every = test_every
        self.scale = scale
        self.max_rows = max_rows
        self.validate_params()
        if window < min_queries:
            raise ConfigError(
                f"defense stage 'prada': window must be >= min_queries ({min_queries}), "
                f"got {window!r}"
            )
        self._clients: ClientCache[PradaClient] = ClientCache()
        self._space: FeatureSpace | None = None

    def setup(self, env: StageEnv) -> None:
        task = env.task
        scale = self.scale
        if task.data is None and scale == "auto" and auto_scale(task) != "range":
            scale = "range" if task.bounded else "none"  # nothing to fit a scale on
        rows = None if task.data is None else np.asarray(task.data.X_train)
        space = feature_space(scale, task, rows)
        self._space = None if space.identity else space
        self._clients.ttl = env.idle_after

    @staticmethod
    def _keys(client_id: str) -> tuple[str, str, str]:
        return f"prada:{client_id}:rows", f"prada:{client_id}:d", f"prada:{client_id}:base"

    def forget(self, client_id: str, store: StateStore) -> None:
        """Delete the client's records, rows and base (an idle client's eviction)."""
        store.delete(self._keys(client_id))
        self._clients.drop(client_id)

    def _sync(self, store: StateStore, client_id: str) -> PradaClient:
        """Read what this worker has not seen yet (its own appends included), in store order."""
        rows_key, records_key, base_key = self._keys(client_id)
        bases = store.items(base_key)  # one or two small items: the newest is in force
        stored = bases[-1] if bases else b""
        state = self._clients.get(client_id)
        if state is not None and stored == state.base_item:
            base = state.base  # ~10 us a decode, twice a request
        else:
            base = Base.decode(stored) if stored else Base()
        if state is not None and (
            state.n_records < base.records_from or state.n_rows < base.rows_from
        ):
            state = None  # what this copy has not read yet was trimmed: read afresh
        changed = state is None
        if state is None:  # new here, dropped, or behind: read back from the store below
            state = PradaClient(base=base, base_item=stored, thresholds=dict(base.thresholds))
            state.n_rows, state.n_records = base.rows_from, base.records_from
        elif base.upto > state.base.upto:
            state.move(base, stored)
            changed = True
        items = store.items(rows_key, state.n_rows)
        if items:
            state.add_rows(state.n_rows, [read_rows(item, labelled=True) for item in items])
            changed = True
        records = store.items(records_key, state.n_records)
        if records:
            state.fold(state.n_records, records)
            changed = True
        # get() marked it used; put() only to count a new size
        return self._clients.put(client_id, state) if changed else state

    def _move_windows(self, store: StateStore, client_id: str, state: PradaClient) -> None:
        """Past twice a window, keep the newest ``window`` records and ``max_rows`` rows: a
        new base, then the store's lists trimmed to it (this worker just synced them all)."""
        held_rows = state.held_rows
        if (
            state.n_records - state.base.records_from <= 2 * self.window
            and held_rows <= 2 * self.max_rows
        ):
            return
        gone, _ = oldest_to_drop(state.row_counts, held_rows, self.max_rows)
        rows_from = state.items_from + gone if gone else state.base.rows_from
        base = Base(
            records_from=max(state.base.records_from, state.n_records - self.window),
            upto=state.n_records,
            rows_from=rows_from,
            thresholds=dict(state.thresholds),
        )
        rows_key, records_key, base_key = self._keys(client_id)
        item = base.encode()
        n_bases = store.append(base_key, [item])
        store.trim(base_key, n_bases - 1)
        store.trim(records_key, base.records_from)
        store.trim(rows_key, base.rows_from)
        state.move(base, item)
        self._clients.put(client_id, state)

    def statistic(self, client_id: str, store: StateStore) -> float | None:
        """The client's current Shapiro–Wilk W (None until ``min_queries`` distances)."""
        return self._w(self._sync(store, client_id))

    def _w(self, state: PradaClient) -> float | None:
        distances = state.d.held()[-self.window :, 0]
        if len(distances) < self.min_queries:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(stats.shapiro(distances).statistic)

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        if ctx.inputs is None or len(ctx.inputs) == 0:
            return answers
        state = self._sync(ctx.store, ctx.client_id)
        # The cache itself only ever takes in the store's lists in order, so that records
        # other workers append between our read and our write are never skipped: this
        # batch's own effects live in the overlays below until they are appended.
        pending: dict[int, list[np.ndarray]] = {}
        thresholds: dict[int, Threshold] = {}
        seen: set[bytes] = set()
        new_rows: list[np.ndarray] = []
        new_labels: list[int] = []
        records: list[bytes] = []
        labels = answers.original.argmax(axis=1)
        inputs = ctx.inputs if self._space is None else self._space(ctx.inputs)
        repeats = state.digests.contains(ctx.digests)
        for x, label, digest, repeat in zip(inputs, labels, ctx.digests, repeats, strict=True):
            label = int(label)
            row = np.asarray(x, dtype=np.float64)
            if repeat or digest in seen:
                # An exact repeat of an earlier query tells a thief nothing new; honest
                # clients repeat themselves, and counting repeats would skew D.
                records.append(record(label, REPEAT, 0.0, digest))
                continue
            seen.add(digest)
            group, extra = state.growing.get(label), pending.get(label, [])
            if (group is None or group.n == 0) and not extra:
                distance, joins, counted = 0.0, True, False
            else:
                squared = group.nearest(row) if group is not None and group.n else math.inf
                for other in extra:
                    squared = min(squared, float(np.dot(other - row, other - row)))
                distance = math.sqrt(squared)
                threshold = thresholds.get(label) or state.thresholds.get(label, Threshold())
                joins = counted = distance > threshold.value
                if counted:
                    thresholds[label] = threshold.plus(distance)
            if joins:
                pending.setdefault(label, []).append(row)
                new_rows.append(row)
                new_labels.append(label)
            records.append(record(label, JOINED if counted else 0, distance, digest))
        rows_key, records_key, _ = self._keys(ctx.client_id)
        n_rows, grown = state.n_rows, []
        if new_rows:
            joined, joined_labels = np.array(new_rows), np.array(new_labels)
            n_rows = ctx.store.append(rows_key, [pack(joined, joined_labels)]) - 1
            grown = [(joined_labels, joined)]  # the item as read_rows would give it back
        if ctx.store.append(records_key, records) - len(records) == state.n_records and (
            n_rows == state.n_rows
        ):
            # Nothing appended by another worker since the read: ours are the next items,
            # taken in as the store would give them back (packing is lossless), not read.
            if grown:
                state.add_rows(state.n_rows, grown)
            state.fold(state.n_records, records)
            state = self._clients.put(ctx.client_id, state)
        else:
            state = self._sync(ctx.store, ctx.client_id)
        self._move_windows(ctx.store, ctx.client_id, state)
        if _acted(ctx, self.name, self.on_alert):
            return answers
        if state.tested_at and state.n_distances - state.tested_at < self.test_every:
            return answers  # the test costs ~150 µs: run it once per test_every new distances
        state.tested_at = state.n_distances
        w = self._w(state)  # just synced: no third read of the store
        if w is None or w >= self.delta:
            return answers
        reason = f"Shapiro-Wilk W = {w:.3f} < {self.delta} over {state.d.n} distances"
        raise_alert(ctx, self.name, reason, self.on_alert)
        return escalate(answers, ctx, self.on_alert)
