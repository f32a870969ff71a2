"""A victim behind a defense pipeline: what both the HTTP service and in-process oracles call."""

import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.defenses.alerts import BLOCKED, STRICT, client_status, served_key
from modeltheft.defenses.base import Answers, DefenseContext, Pipeline, StageEnv
from modeltheft.defenses.batching import Together, batch_invariant
from modeltheft.errors import Blocked, ConfigError, RateLimited
from modeltheft.state.audit import AuditEntry, status_name
from modeltheft.state.base import IDLE_AFTER, StateStore
from modeltheft.state.group import GroupCommit
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import Task, task_from_model

T = TypeVar("T")
BLOCKED_MESSAGE = "this API key is blocked: its queries look like model extraction"
MAX_RNGS = 4096
"""Clients whose random stream a worker keeps (the least recently used one is dropped)."""
EVICT_BATCH = 4
"""Idle clients evicted per sweep (every SWEEP_EVERY seconds: 240 a minute). Each one's
detector state is up to ~15,000 rows, deleted inside a request's commit: 100 at once, once a
minute, could stall every request in flight for up to a second."""
SWEEP_EVERY = 1.0
"""Seconds between two sweeps of idle clients (or a tenth of ``idle_after``, if shorter)."""
PRUNE_EVERY = 1.0
"""Seconds between two prunings of the audit (or a tenth of its retention, if shorter)."""
PRUNE_ROWS = 5000
"""Audit entries deleted at most per pruning (~2.5 ms with SQLite): a day's retention pruned
once a minute deleted a minute of traffic at once, a stall of every request in flight."""
SWEPT = "idle:swept"
"""Counter: every activity epoch below it was swept."""


def _inputs(X: np.ndarray) -> np.ndarray:
    """A request's rows as the stages and the model see them: a float copy, read-only."""
    inputs = np.array(X, dtype=float)
    inputs.flags.writeable = False
    return inputs


def active_key(epoch: int) -> str:
    """Store key of the set of clients that sent a request in activity epoch ``epoch``."""
    return f"active:{epoch}"


@dataclass(frozen=True)
class Reply:
    """A batch's answer: labels as class values, the defended answers, headers for the client."""

    labels: np.ndarray
    answers: Answers
    headers: dict[str, str]


class GuardedModel:
    """Answer a client's batch: its status, admission, then the model, then the other stages.

    ``task`` says what the model answers (its rows, bounds, classes, training data); by
    default it is read from the model itself (width and classes only).

    Each client draws from its own random stream, derived from ``seed`` and the client's name,
    so one client's answers do not depend on what other clients asked. Without a seed the
    streams come from the operating system's entropy.

    With ``audit_retention`` (seconds; None or 0: no audit) every request, answered or
    refused, leaves one :class:`~modeltheft.state.audit.AuditEntry` in the store before its
    answer (or refusal) is returned; entries older than the retention are pruned now and then.

    With ``idle_after`` (seconds; None or 0: never) the detector state of a client without a
    request for longer than that is evicted from the store (:meth:`evict_idle`, at most once
    a second, :data:`EVICT_BATCH` clients at a time): its rows, distances, counts and rows
    seen. Kept for good: its status (strict, blocked), its alerts and its quota and served
    counters, so waiting neither clears a thief's status nor refills more than its token
    bucket does; a client that returns after idling is tested afresh. Activity is kept per
    epoch of ``idle_after / 4`` seconds (one small set each), so a client is evicted between
    ``idle_after`` and ``1.25 * idle_after`` after its last request (plus the sweeps' pace).
    """

    def __init__(
        self,
        model: ClassifierMixin | None,
        pipeline: Pipeline,
        store: StateStore | None = None,
        seed: int | None = None,
        task: Task | None = None,
        audit_retention: float | None = None,
        idle_after: float | None = IDLE_AFTER,
    ) -> None:
        self.model = model
        self.pipeline = pipeline
        self.store = store if store is not None else MemoryStore()
        # The stages' calls, all inside a batch of self.store, skip a breaker's own check.
        self._inner: StateStore = getattr(self.store, "inner", self.store)
        self.seed = seed
        if model is None and task is None:
            raise ConfigError("a GuardedModel without a model needs its task")
        self.task = task if model is None else task_from_model(model, task)  # type: ignore[assignment]
        self.classes = np.asarray(self.task.classes)
        self.resolution = self.task.resolution
        self.idle_after = idle_after or None
        pipeline.setup(StageEnv(self.store, self.task, self.idle_after))
        self._remember = pipeline.remembers_clean
        self._rngs: dict[str, np.random.Generator] = {}  # in use order: the oldest first
        self._lock = threading.Lock()
        self._commits = GroupCommit(self.store)
        # A group's rows are predicted in one call only if that changes no answer's last bit.
        self._together = False
        if model is not None and self._commits.enabled:
            from modeltheft.victim.fast import check_rows  # the CLI imports this module

            self._together = batch_invariant(model.predict_proba, check_rows(self.task))
        self._batch: tuple[int, Together] | None = None  # the open group's, and its number
        self.audit_retention = audit_retention or None
        self._next_prune = 0.0
        self._next_sweep = 0.0
        self._marked: tuple[int, set[str]] = (-1, set())

    def _rng(self, client_id: str) -> np.random.Generator:
        """The client's random stream; past :data:`MAX_RNGS` clients the least recently used
        is dropped (with a seed, a client that returns then starts its stream again)."""
        rng = self._rngs.pop(client_id, None)
        if rng is None:
            if self.seed is None:
                rng = np.random.default_rng()
            else:
                tag = int.from_bytes(hashlib.sha256(client_id.encode()).digest()[:8], "big")
                rng = np.random.default_rng([self.seed, tag])
            if len(self._rngs) >= MAX_RNGS:
                del self._rngs[next(iter(self._rngs))]
        self._rngs[client_id] = rng
        return rng

    def answer(self, client_id: str, X: np.ndarray) -> Reply:
        """Answer ``X`` for ``client_id``; may raise RateLimited, Blocked or StateUnavailable."""
        return self._answer_now(self._local_model(), client_id, _inputs(X))  # one transaction

    async def answer_shared(self, client_id: str, X: np.ndarray) -> Reply:
        """:meth:`answer` in a running event loop: the requests of one turn of the loop share
        one commit of the store (:mod:`~modeltheft.state.group`), each answered after it.

        With a store that has transactions, each request's work is deferred to the group's
        commit, where the group's requests run back to back in the order they came; if the
        model is :func:`~modeltheft.defenses.batching.batch_invariant`, their rows are
        predicted in one call (the answers are the same to the bit)."""
        model = self._local_model()
        inputs = _inputs(X)
        if not self._commits.enabled:
            return self._answer_now(model, client_id, inputs)
        # The work runs in the commit's callback, after ``place`` is set: deferring first
        # opens the group whose shared prediction the rows then join.
        done = self._commits.defer(lambda: self._answer_now(model, client_id, inputs, place))
        place = self._place(model, inputs)
        return await done

    def _place(self, model: ClassifierMixin, inputs: np.ndarray) -> tuple[Together, int] | None:
        """Where ``inputs`` are in the open group's shared prediction, if there is one."""
        if not self._together:
            return None
        group = self._commits.groups
        if self._batch is None or self._batch[0] != group:
            self._batch = (group, Together(model.predict_proba))
        together = self._batch[1]
        start = together.add(inputs)
        return None if start is None else (together, start)

    def _local_model(self) -> ClassifierMixin:
        if self.model is None:
            raise TypeError("this GuardedModel has no model: use answer_async with a predict")
        return self.model

    def _answer_now(
        self,
        model: ClassifierMixin,
        client_id: str,
        inputs: np.ndarray,
        place: tuple[Together, int] | None = None,
    ) -> Reply:
        with self._lock, self.store.batch():
            ctx, status = self._admit(client_id, inputs)
            if place is not None and ctx.inputs is inputs:
                probabilities = place[0].answers(place[1], len(inputs))
            else:
                probabilities = model.predict_proba(ctx.inputs)
            answers = self._transform(ctx, status, probabilities)
            return self._reply(ctx, status, answers)

    async def _grouped(self, work: Callable[[], T]) -> T:
        """``work()`` (one store batch) in this turn's group commit; its result (or its
        refusal: 429, 403) once the commit is done."""
        done = self._commits.join()
        try:
            result = work()
        except (Blocked, RateLimited):
            await GroupCommit.committed(done)  # the refusal was audited: commit it first
            raise
        await GroupCommit.committed(done)
        return result

    async def answer_async(
        self,
        client_id: str,
        X: np.ndarray,
        predict: Callable[[np.ndarray], Awaitable[np.ndarray]],
        labels_only: bool = False,
    ) -> Reply:
        """Answer ``X`` with probabilities from ``predict`` (a model another server serves).

        Status and admission run first and are committed (a refusal never reaches
        ``predict``), then ``predict`` runs without the lock, then the stages, under the
        client's status read again (a concurrent request may have flagged or blocked the key
        meanwhile). If ``predict`` raises, nothing is answered or remembered: the request is
        audited as ``failed`` and the error propagates. With ``labels_only`` (the upstream
        sends one-hot rows), no probabilities are exposed.
        """

        def admit() -> tuple[DefenseContext, int]:
            with self._lock, self.store.batch():
                return self._admit(client_id, _inputs(X))

        ctx, status = await self._grouped(admit)
        try:
            probabilities = await predict(ctx.inputs)
        except Exception:
            await self._grouped(lambda: self._audit(ctx, status, failed=True))
            raise

        def finish() -> Reply:
            with self._lock, self.store.batch():
                # Another request of this key may have flagged or blocked it meanwhile.
                now = client_status(self.store, client_id)
                if now >= BLOCKED > status:
                    refused = Blocked(BLOCKED_MESSAGE)
                    self._audit(ctx, now, refused=refused)
                    raise refused
                current = max(status, now)
                answers = self._transform(ctx, current, probabilities)
                if labels_only and answers.expose_probabilities:
                    answers = replace(answers, expose_probabilities=False)
                return self._reply(ctx, current, answers)

        return await self._grouped(finish)

    def _admit(self, client_id: str, inputs: np.ndarray) -> tuple[DefenseContext, int]:
        """The client's status and context for ``inputs`` (:func:`_inputs`), after admission
        (hold the lock). A refusal is audited and raised."""
        status = client_status(self.store, client_id)
        self._active(client_id)
        ctx = DefenseContext(
            client_id,
            self._rng(client_id),
            self._inner,
            inputs=inputs,
            resolution=self.resolution,
        )
        try:
            if status >= BLOCKED:
                raise Blocked(BLOCKED_MESSAGE)
            self.pipeline.admit(len(inputs), ctx)
        except (Blocked, RateLimited) as refused:
            self._audit(ctx, status, refused=refused)
            raise
        return ctx, status

    def _transform(self, ctx: DefenseContext, status: int, probabilities: np.ndarray) -> Answers:
        """The defended answers to the model's ``probabilities`` (hold the lock)."""
        self.store.incr(served_key(ctx.client_id), len(ctx.inputs))
        answers = self.pipeline.transform(probabilities, ctx, strict=status >= STRICT)
        if not answers.strict and self._remember:
            ctx.remember_clean()  # a row sent now keeps this answer if the key is flagged
        return answers

    def _reply(self, ctx: DefenseContext, status: int, answers: Answers) -> Reply:
        labels = self.classes[answers.labels]
        self._audit(ctx, status, answers=answers, labels=labels)
        return Reply(labels, answers, dict(ctx.headers))

    def _audit(
        self,
        ctx: DefenseContext,
        status: int,
        answers: Answers | None = None,
        labels: np.ndarray | None = None,
        refused: Exception | None = None,
        failed: bool = False,
    ) -> None:
        """Record one request in the audit log (if on); prune old entries now and then."""
        if self.audit_retention is None:
            return
        now = time.time()
        client_id = ctx.client_id
        hashes = tuple(digest.hex() for digest in ctx.digests)  # = row_hashes(ctx.inputs)
        if failed:
            entry = AuditEntry(
                now,
                client_id,
                "failed",
                hashes,
                status_before=status_name(status),
                status_after=status_name(status),
            )
        elif answers is None or labels is None:
            blocked = isinstance(refused, Blocked)
            entry = AuditEntry(
                now,
                client_id,
                "blocked" if blocked else "rate_limited",
                hashes,
                status_before=status_name(status),
                status_after=status_name(status),
            )
        else:
            entry = AuditEntry(
                now,
                client_id,
                "answered",
                hashes,
                labels=tuple(labels.tolist()),
                status_before=status_name(status),
                status_after=status_name(client_status(self.store, client_id)),
                suspicious=(
                    0 if answers.suspicious is None else int(np.count_nonzero(answers.suspicious))
                ),
                altered=answers.altered,
                probabilities=bool(answers.expose_probabilities),
            )
        self.store.audit_append([entry])
        if now >= self._next_prune:
            # Often and a little at a time: a short indexed delete, never a long stall.
            self._next_prune = now + min(PRUNE_EVERY, self.audit_retention / 10)
            self.store.audit_prune(now - self.audit_retention, limit=PRUNE_ROWS)

    def _epoch(self, now: float) -> int:
        return int(now // (self.idle_after / 4)) if self.idle_after else 0

    def _active(self, client_id: str) -> None:
        """Record that the client sent a request in this epoch (once per worker and epoch);
        sweep idle clients now and then (hold the lock)."""
        if self.idle_after is None:
            return
        now = time.time()
        epoch = self._epoch(now)
        if self._marked[0] != epoch or len(self._marked[1]) > 20_000:
            self._marked = (epoch, set())
        if client_id not in self._marked[1]:
            self.store.add_member(active_key(epoch), client_id)
            self._marked[1].add(client_id)
        if now >= self._next_sweep:
            self._next_sweep = now + min(SWEEP_EVERY, self.idle_after / 10)
            self.evict_idle(now)

    def evict_idle(self, now: float | None = None, limit: int = EVICT_BATCH) -> list[str]:
        """Look at up to ``limit`` clients of old epochs, evict those idle for longer than
        ``idle_after`` and return them.

        The clients of an epoch at least 5 epochs old that are in no later epoch's set were
        idle for more than ``idle_after``: each stage forgets them (:meth:`Pipeline.forget`).
        With SQLite a sweep is one transaction; with Redis its calls are not atomic with a
        request of the same client in another worker, so a client that returns at the very
        moment of its eviction may lose what that request added to its detector state.
        """
        if self.idle_after is None:
            return []
        now = time.time() if now is None else now
        epoch = self._epoch(now)
        last = epoch - 5  # a client last seen in an epoch <= last is idle > idle_after
        swept = self.store.get(SWEPT)
        if swept == 0:  # the first sweep: nothing older than this
            swept = self.store.raise_to(SWEPT, last)
        evicted: list[str] = []
        work = 0  # clients looked at: bounded, evicted or not
        for old in range(swept, last + 1):
            while work < limit:
                wanted = limit - work
                taken = self.store.take_members(active_key(old), wanted)
                work += len(taken)
                later = [active_key(e) for e in range(old + 1, epoch + 1)]
                recent = np.zeros(len(taken), dtype=bool)
                for key in later:
                    recent |= np.array(self.store.has_members(key, taken), dtype=bool)
                for client, seen_later in zip(taken, recent, strict=True):
                    if not seen_later:
                        self.pipeline.forget(client, self.store)
                        self._rngs.pop(client, None)
                        evicted.append(client)
                if len(taken) < wanted:
                    self.store.raise_to(SWEPT, old + 1)  # this epoch's set is empty now
                    work += 1  # an empty epoch costs a read too
                    break
            if work >= limit:
                break
        return evicted
