"""A service-wide monitor of young keys: catches a thief that rotates API keys (Sybil).

Per-client detectors need a few dozen queries from one key; a thief with a fresh key every
9 queries never gives them that. What it cannot hide is that, pooled over all *young* keys
(fewer than ``young_queries`` rows served), its rows do not look like honest traffic. Over a
sliding window of the last ``window`` young rows (shared by workers through the store), four
one-sided tests, each against what honest traffic does:

(a) suspicious rows: rows out of distribution (k-NN score above the quantile ``1 - fpr`` of
    the reference's own scores) or marked suspicious by an earlier stage, against an honest
    rate ``honest_rate``: ``P(Binomial(n, honest_rate) >= hits)``;
(b) a shift of the rows' OOD scores: each row's upper-tail rank ``u`` among the reference's
    leave-one-out scores is about uniform for honest rows; a z-test of the mean of ``u``;
(c) new keys: distinct young keys in the window against ``key_rate`` per row (off by
    default: the honest rate of new keys depends on the deployment);
(d) rows of different keys in the same few places: the young rows' counts over ``clusters``
    k-means cells of the reference, G-test against the reference's shares. Honest windows
    repeat a finite population of rows, so the reference shares are trusted only to within
    the sampling error of ``effective_rows`` rows (G is scaled down to that many rows).

An alert needs the smallest p-value, times the number of tests run (Bonferroni), below
``alpha``. It is recorded once per *watch* as a service-wide alert
(:func:`~modeltheft.defenses.alerts.raise_service_alert`), then every batch of a young key is
escalated (``alerts.escalate``, as a per-client detector does) until ``quiet`` young rows
have passed without evidence. Keys already strict by a per-client detector's alert are left
out (their detector acts on them). With ``mark_keys``, every key that is young during a watch
also keeps the strict status for good (a thief that rotates every 25 keys then gains
nothing by outliving ``young_queries``; honest newcomers during a watch pay for it).

State: young rows are appended as 8-byte records to lists per epoch of ``window`` young rows
(``svc:rows:<epoch>``); only the two newest epochs are read (each worker caches them and
reads only what is new), so a request reads at most ``2 * window`` records. Older epochs are
never read again: the request that starts an epoch deletes the one before the previous, so
the store holds about ``3 * window`` records (issue 14; they used to remain, 8 bytes per
young row ever served).
"""

import logging
import math
import zlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy import special
from sklearn.cluster import KMeans

from modeltheft.defenses.alerts import (
    STRICT,
    client_status,
    escalate,
    raise_service_alert,
    served_key,
    status_key,
)
from modeltheft.defenses.base import STAGES, Answers, DefenseContext, OutputStage, StageEnv
from modeltheft.defenses.detection import RATE, REFERENCE
from modeltheft.defenses.ood import SCALES, KnnScorer, knn_scorer
from modeltheft.errors import ConfigError
from modeltheft.registry import BOOL, Interval, Options
from modeltheft.state.base import StateStore

log = logging.getLogger("modeltheft.defenses")

RECORD = np.dtype([("u", ">u2"), ("cluster", "u1"), ("flag", "u1"), ("key", ">u4")])
"""One young row: score rank u (16 bits), k-means cell, suspicious flag, key tag (32 bits)."""
_NO_RECORDS = np.zeros(0, dtype=RECORD)
SEQ, WATCH, EPISODES = "svc:young", "svc:watch_until", "svc:episodes"
TESTS = ("suspicious", "score_shift", "new_keys", "same_cells")


@dataclass
class _Cache:
    """A worker's copy of the two newest epoch lists (read incrementally), per epoch the
    items read and their records: a young key's request adds its own to an array instead of
    joining the whole window's bytes again."""

    lists: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)

    def sync(self, store: StateStore, epoch: int) -> np.ndarray:
        for old in [e for e in self.lists if e < epoch - 1]:
            del self.lists[old]
        parts = []
        for e in (epoch - 1, epoch):
            if e < 0:
                continue
            read, records = self.lists.get(e, (0, _NO_RECORDS))
            items = store.items(f"svc:rows:{e}", read)
            if items or e not in self.lists:
                added = np.frombuffer(b"".join(items), dtype=RECORD)
                if len(records):
                    records = np.concatenate([records, added])
                    records.flags.writeable = False  # (as the read-only added ones)
                else:
                    records = added
                self.lists[e] = (read + len(items), records)
            parts.append(records)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def key_tag(client_id: str) -> int:
    """A 32-bit tag of a client name (distinct keys are counted by tag)."""
    return zlib.crc32(client_id.encode())


@STAGES.register
class ServiceMonitor(OutputStage):
    """Service-wide tests over young keys' rows; a watch puts young keys under the strict policy.

    See the module docstring for the four tests, the watch and how state is bounded.
    """

    name = "service_monitor"
    paper = (
        "Colluding (distributed) extraction: Yao et al., FDINet, arXiv:2306.11338, 2023; here "
        "Juuti et al.'s PRADA (EuroS&P 2019) idea of testing query distributions, pooled over keys"
    )
    honest_cost = (
        "none without an alert; during a watch, keys younger than young_queries are strict"
    )
    keeps_argmax = True
    keeps_simplex = True
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "reference": [REFERENCE],
        "scale": [Options(*SCALES)],
        "k": [Interval(int, 1, None)],
        "fpr": [RATE],
        "honest_rate": [RATE],
        "alpha": [RATE],
        "young_queries": [Interval(int, 1, None)],
        "window": [Interval(int, 10, None)],
        "short_window": [Interval(int, 0, None)],
        "min_rows": [Interval(int, 1, None)],
        "clusters": [Interval(int, 0, 255)],
        "effective_rows": [Interval(int, 10, None)],
        "key_rate": [Interval(float, 0, 1)],
        "quiet": [Interval(int, 1, None)],
        "on_alert": [Options("log", "strict")],
        "mark_keys": [BOOL],
    }

    def __init__(
        self,
        reference: str = "task",
        k: int = 5,
        fpr: float = 0.01,
        honest_rate: float = 0.02,
        alpha: float = 1e-6,
        young_queries: int = 20,
        window: int = 600,
        short_window: int = 150,
        min_rows: int = 50,
        clusters: int = 12,
        effective_rows: int = 100,
        key_rate: float = 0.0,
        quiet: int = 200,
        on_alert: str = "strict",
        mark_keys: bool = False,
        scale: str = "auto",
    ) -> None:
        self.reference = reference
        self.k = k
        self.fpr = fpr
        self.honest_rate = honest_rate
        self.alpha = alpha
        self.young_queries = young_queries
        self.window = window
        self.short_window = short_window
        self.min_rows = min_rows
        self.clusters = clusters
        self.effective_rows = effective_rows
        self.key_rate = key_rate
        self.quiet = quiet
        self.on_alert = on_alert
        self.mark_keys = mark_keys
        self.scale = scale
        self.validate_params()
        if min_rows > window:
            raise ConfigError(
                f"defense stage 'service_monitor': min_rows must be <= window ({window}), "
                f"got {min_rows!r}"
            )
        self._scorer: KnnScorer | None = None
        self._centers = np.empty((0, 0))
        self._center_norms = np.empty(0)
        self._shares = np.empty(0)
        self._cache = _Cache()

    def setup(self, env: StageEnv) -> None:
        self._scorer = knn_scorer(self.reference, self.k, env.task, self.scale)
        reference = self._scorer._reference  # already in the scorer's space
        n_cells = min(self.clusters, len(reference) // 10)
        if n_cells >= 2:
            # A fixed random_state: the same cells in every worker and after every restart.
            km = KMeans(n_cells, n_init=4, random_state=0).fit(reference)
            self._centers = km.cluster_centers_
            self._center_norms = (self._centers**2).sum(1)  # once, not every young row
            self._shares = np.bincount(km.labels_, minlength=n_cells) / len(reference)
        self._cache = _Cache()

    def _records(self, X: np.ndarray, flagged: np.ndarray, client_id: str) -> np.ndarray:
        if self._scorer is None:
            raise ConfigError(f"stage {self.name!r} was used before setup")
        calibration = self._scorer.calibration
        scores = self._scorer.score(X)
        n_cal = len(calibration)
        above = n_cal - np.searchsorted(calibration, scores, side="left")
        u = (above + 1) / (n_cal + 1)
        out = np.zeros(len(X), dtype=RECORD)
        out["u"] = np.round(u * 65535)
        out["flag"] = (u <= self.fpr) | flagged
        out["key"] = key_tag(client_id)
        if len(self._centers):
            Z = X if self._scorer.space is None else self._scorer.space(X)
            d = (Z**2).sum(1)[:, None] - 2 * Z @ self._centers.T + self._center_norms
            out["cluster"] = d.argmin(axis=1)
        return out

    def p_values(self, rows: np.ndarray) -> dict[str, float]:
        """The p-value of each test run on ``rows`` (records of young rows)."""
        n = len(rows)
        hits = int(rows["flag"].sum())
        out = {"suspicious": float(special.bdtrc(hits - 1, n, self.honest_rate)) if hits else 1.0}
        u = rows["u"].astype(float) / 65535
        z = (0.5 - np.add.reduce(u) / n) * math.sqrt(12 * n)  # u.mean() without its wrapper
        out["score_shift"] = float(special.ndtr(-z))
        if self.key_rate > 0:
            keys = len(np.unique(rows["key"]))
            out["new_keys"] = float(special.bdtrc(keys - 1, n, self.key_rate))
        if len(self._shares) and n >= 12 * len(self._shares):  # ~10 rows expected per cell
            counts = np.bincount(rows["cluster"], minlength=len(self._shares))
            expected = self._shares * n
            seen = counts > 0
            g = 2.0 * float((counts[seen] * np.log(counts[seen] / expected[seen])).sum())
            g *= min(1.0, self.effective_rows / n)
            out["same_cells"] = float(special.chdtrc(len(self._shares) - 1, g))
        return out

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        if ctx.inputs is None or len(ctx.inputs) == 0:
            return answers
        n = len(ctx.inputs)
        before = max(0, ctx.store.get(served_key(ctx.client_id)) - n)
        young = min(n, max(0, self.young_queries - before))
        if young == 0:
            return answers
        status = client_status(ctx.store, ctx.client_id)
        if status >= STRICT and not ctx.store.get(f"svc:marked:{ctx.client_id}"):
            # A per-client detector already caught this key: its rows are its detector's
            # business, and counting them would start watches that cost honest newcomers.
            return answers
        # Rows marked only because this watch made the key strict are not new evidence:
        # counting them would keep a watch alive.
        flagged = answers.flagged[:young] & (status < STRICT)
        X = ctx.inputs if young == n else ctx.inputs[:young]  # the same array: scores memoised
        records = self._records(X, flagged, ctx.client_id)
        seq = ctx.store.incr(SEQ, young)
        start = seq - young
        ctx.store.append(f"svc:rows:{start // self.window}", [records.tobytes()])
        if start // self.window != seq // self.window and seq // self.window >= 2:
            # A new epoch began: the one before the previous is never read again.
            ctx.store.delete([f"svc:rows:{seq // self.window - 2}"])
        rows = self._cache.sync(ctx.store, seq // self.window)[-self.window :]
        watching = ctx.store.get(WATCH) > start  # the watch covers young rows up to it
        if len(rows) >= self.min_rows:
            p = self.p_values(rows)
            if self.min_rows <= self.short_window < len(rows):
                p |= {
                    f"{t} (last {self.short_window})": v
                    for t, v in self.p_values(rows[-self.short_window :]).items()
                }
            test, smallest = min(p.items(), key=lambda item: item[1])
            if smallest * len(p) < self.alpha:
                ctx.store.raise_to(WATCH, seq + self.quiet)
                if not watching:
                    episode = ctx.store.incr(EPISODES)
                    keys = len(np.unique(rows["key"]))
                    reason = (
                        f"{test}: p = {smallest:.2g} over the last {len(rows)} rows of young "
                        f"keys ({keys} keys, {int(rows['flag'].sum())} suspicious rows)"
                    )
                    raise_service_alert(
                        ctx.store,
                        self.name,
                        reason,
                        "watch" if self.on_alert == "strict" else "log",
                        episode,
                        after_queries=seq,  # young rows served by the whole service
                        p_values=p,
                    )
                watching = True
        if not watching or self.on_alert == "log":
            return answers
        if self.mark_keys:
            ctx.store.raise_to(f"svc:marked:{ctx.client_id}", 1)
            ctx.store.raise_to(status_key(ctx.client_id), STRICT)
        return escalate(answers, ctx, "strict")
