"""Defense stages and the pipeline that runs them for each request.

Every stage may act at two points of a request: ``admit`` runs before the model is called and
may refuse the client's queries (raise :class:`RateLimited`); ``transform`` runs after it and
rewrites the ``(n, k)`` answers. Stateful stages keep their state in the request's
:class:`~modeltheft.state.base.StateStore`, so that it survives restarts and is shared by
worker processes.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modeltheft.defenses.keyed import canonical, row_digests
from modeltheft.registry import Plugin, Registry
from modeltheft.state.audit import row_digest
from modeltheft.state.base import StateStore
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks.base import Task

if TYPE_CHECKING:
    once = cached_property
else:

    class once:  # noqa: N801 - a decorator, named like functools' own
        """``functools.cached_property`` without the lock Python 3.11 takes on every first
        read (3.12 dropped it): ~0.4 us, six times a request. A request's context and
        answers are read by one thread."""

        def __init__(self, func: Callable[[Any], Any]) -> None:
            self.func, self.name, self.__doc__ = func, func.__name__, func.__doc__

        def __set_name__(self, owner: type, name: str) -> None:
            self.name = name

        def __get__(self, obj: object, owner: type | None = None) -> Any:
            if obj is None:
                return self
            value = obj.__dict__[self.name] = self.func(obj)
            return value


@dataclass(frozen=True)
class StageEnv:
    """What a stage may need once, when the service starts: the store and the model's task
    (its width, classes, bounds and, when the owner has it, its training rows)."""

    store: StateStore
    task: Task
    idle_after: float | None = None
    """Seconds after which an idle client's detector state may be evicted from the store
    (:meth:`Stage.forget`): a worker's copy of it is not kept longer either. None: never."""

    @property
    def n_classes(self) -> int:
        """Number of classes the model answers."""
        return self.task.n_classes

    @property
    def n_features(self) -> int:
        """Input width."""
        return self.task.n_features


SEEN_SPAN = 10_000
"""Queries a generation of a client's "seen" sets spans: a set holds the rows of one span,
and a row is looked up in the current and the previous set only (issue 14: the sets grew
with every distinct row ever sent). A row sent again more than ``SEEN_SPAN`` to
``2 * SEEN_SPAN`` queries later is taken for a new one: under the strict policy it loses the
answer it had while clean; the OOD monitor counts it again (once per span at most)."""


def served_key(client_id: str) -> str:
    """Store key of the number of a client's queries that passed admission."""
    return f"served:{client_id}"


def seen_key(client_id: str, generation: int = 0) -> str:
    """Store key of the set of canonical rows (digests) a client sent under the normal policy
    (one set per generation of :data:`SEEN_SPAN` queries; the first keeps its old name)."""
    return f"seen:{client_id}" if generation == 0 else f"seen:{client_id}:{generation}"


def generation(served: int) -> int:
    """The generation of "seen" sets in use after ``served`` queries."""
    return served // SEEN_SPAN


def generations(served_before: int, n: int) -> tuple[int, int | None]:
    """The generation a batch of ``n`` queries after ``served_before`` writes to, and, if the
    next batch starts a new one, the generation it will no longer read (deleted by this
    batch, after its own reads), else None."""
    current = generation(served_before)
    crosses = generation(served_before + n) > current
    return current, (current - 1 if crosses and current >= 1 else None)


@dataclass(frozen=True)
class DefenseContext:
    """One request as the stages see it.

    ``inputs`` is the batch (read-only) when the stage runs after admission; ``headers`` is
    filled by stages that advertise something to the client (rate-limit headers).
    """

    client_id: str
    rng: np.random.Generator
    store: StateStore
    inputs: np.ndarray | None = None
    headers: dict[str, str] = field(default_factory=dict)
    resolution: np.ndarray | None = None
    """Per-feature precision of the model's task (:attr:`~modeltheft.tasks.base.Task.resolution`):
    keyed choices are made on :attr:`canonical` rows. None: float32 rounding only."""
    _keyed: dict[bytes, list[bytes]] = field(default_factory=dict, repr=False, compare=False)

    @once
    def digests(self) -> list[bytes]:
        """:func:`~modeltheft.state.audit.row_digest` of each exact input row (the audit log's)."""
        return [] if self.inputs is None else [row_digest(row) for row in self.inputs]

    @once
    def canonical(self) -> np.ndarray:
        """The input rows in canonical form (:func:`~modeltheft.defenses.keyed.canonical`),
        computed once per request (read-only; None-safe: empty without inputs)."""
        if self.inputs is None:
            return np.empty((0, 0))
        rows = canonical(self.inputs, self.resolution)
        rows.flags.writeable = False
        return rows

    @once
    def canonical_digests(self) -> list[bytes]:
        """:func:`~modeltheft.state.audit.row_digest` of each canonical row ("seen" sets)."""
        return [row_digest(row) for row in self.canonical]

    @once
    def canonical_hex(self) -> list[str]:
        """:attr:`canonical_digests` as hex strings: the members of the "seen" sets."""
        return [digest.hex() for digest in self.canonical_digests]

    @once
    def known(self) -> np.ndarray:
        """Rows (canonical) the client already sent under the normal policy: under the strict
        policy they keep the answer they had then, so a thief cannot probe its key's status
        with rows it knows the answers to. Read from the store on first use only."""
        if len(self.canonical) == 0:
            return np.zeros(0, dtype=bool)
        digests = self.canonical_hex
        current, _ = generations(self.served_before, len(digests))
        known = np.zeros(len(digests), dtype=bool)
        for generation in range(max(0, current - 1), current + 1):
            key = seen_key(self.client_id, generation)
            known |= np.array(self.store.has_members(key, digests), dtype=bool)
        return known

    @property
    def served_before(self) -> int:
        """The client's queries served before this batch (its own counted already)."""
        n = 0 if self.inputs is None else len(self.inputs)
        return max(0, self.store.get(served_key(self.client_id)) - n)

    def remember_clean(self) -> None:
        """Record this batch's rows as answered under the normal policy (in the current
        generation's set; the previous one is deleted when the next generation begins)."""
        if len(self.canonical):
            digests = self.canonical_hex
            current, stale = generations(self.served_before, len(digests))
            self.store.add_new_members(seen_key(self.client_id, current), digests)
            if stale is not None:
                self.store.delete([seen_key(self.client_id, stale)])

    def keyed_digests(self, key: bytes) -> list[bytes]:
        """HMAC-SHA256 under ``key`` of each canonical row, computed once per key."""
        if key not in self._keyed:
            self._keyed[key] = row_digests(key, self.canonical)
        return self._keyed[key]

    @classmethod
    def local(
        cls,
        rng: np.random.Generator,
        inputs: np.ndarray | None = None,
        client_id: str = "local",
        resolution: np.ndarray | None = None,
    ) -> "DefenseContext":
        """A context with fresh in-memory state: for experiments and tests."""
        return cls(
            client_id=client_id,
            rng=rng,
            store=MemoryStore(),
            inputs=inputs,
            resolution=resolution,
        )


@dataclass(frozen=True)
class Answers:
    """The answers to one batch as they pass through the stages.

    ``original`` is the victim's own probability array and never changes; ``probabilities`` is
    the current, defended one. ``expose_probabilities`` is False once a stage decides that only
    labels may leave the service. ``suspicious`` marks the rows that detection stages consider
    part of an extraction attempt (misinformation and watermarking act on those rows only).

    ``strict`` says the client is under the strict policy (or a detector put it there during
    this batch). Which rows that policy acts on is :meth:`strict_rows`; in a pipeline whose
    stages grade them (``graded``: adaptive misinformation misinforms those that look
    synthetic), escalation marks none wholesale, otherwise it marks them all suspicious.
    """

    original: np.ndarray
    probabilities: np.ndarray
    expose_probabilities: bool = True
    suspicious: np.ndarray | None = None
    strict: bool = False
    graded: bool = False

    @once
    def labels(self) -> np.ndarray:
        """Column index of each row's top probability (first one on ties; computed once: a
        stage changes the probabilities by a copy, :meth:`with_probabilities`)."""
        return self.probabilities.argmax(axis=1)  # np.argmax without its dispatch wrapper

    @once
    def altered(self) -> int:
        """Rows answered with another label than the victim's own (misinformed, watermarked)."""
        return int(np.count_nonzero(self.labels != self.original.argmax(axis=1)))

    @property
    def flagged(self) -> np.ndarray:
        """Boolean mask of suspicious rows (all False if no stage marked any)."""
        if self.suspicious is None:
            return np.zeros(len(self.original), dtype=bool)
        return self.suspicious

    @property
    def any_flagged(self) -> bool:
        """Whether any row is suspicious (``flagged.any()`` without building an empty mask)."""
        return self.suspicious is not None and bool(self.suspicious.any())

    def strict_rows(self, ctx: "DefenseContext") -> np.ndarray:
        """Rows the strict policy may act on: all but those the client sent while it was
        under the normal policy (:attr:`DefenseContext.known`); none if not strict."""
        if not self.strict:
            return np.zeros(len(self.original), dtype=bool)
        known = ctx.known
        if len(known) != len(self.original):  # a context without the batch's rows
            return np.ones(len(self.original), dtype=bool)
        return ~known

    def escalated(self, ctx: "DefenseContext") -> "Answers":
        """This batch under the strict policy: its :meth:`strict_rows` marked suspicious,
        unless a stage of the pipeline grades them (``graded``)."""
        answers = replace(self, strict=True)
        return answers if self.graded else answers.mark(answers.strict_rows(ctx))

    def with_probabilities(self, probabilities: np.ndarray) -> "Answers":
        """A copy with new probabilities."""
        return replace(self, probabilities=probabilities)

    def mark(self, rows: np.ndarray) -> "Answers":
        """A copy with ``rows`` (a boolean mask) added to the suspicious rows (these answers
        themselves if it marks none: most requests, no copy)."""
        rows = np.asarray(rows, dtype=bool)
        if rows.shape == (len(self.original),) and not rows.any():
            return self
        return replace(self, suspicious=self.flagged | rows)


class Stage(Plugin):
    """Common manners of all stages: a registered name, hooks, claims the contract tests check.

    Parameters are declared in ``_parameter_constraints`` (see :mod:`modeltheft.registry`);
    a constructor stores its arguments and calls :meth:`validate_params`, so a stage built by
    hand is checked as one built from a TOML file.
    """

    name: ClassVar[str] = "stage"
    kind: ClassVar[str] = "defense stage"
    paper: ClassVar[str] = ""
    honest_cost: str = ""
    """What the stage costs an honest client, in one line (shown in docs and ``describe``)."""
    keeps_argmax: bool = False
    """The stage never changes a row's top class."""
    keeps_simplex: bool = False
    """Given rows that sum to 1, the stage returns rows that sum to 1."""
    grades_strict: bool = False
    needs_probabilities: bool = False
    """The stage works on the model's probabilities beyond its top class: on a labels-only
    upstream (gateway mode) it has nothing to work on."""
    """The stage decides itself which rows of a strict client to act on (:class:`Answers`)."""

    def setup(self, env: StageEnv) -> None:
        """Called once before the first request (load reference data, secrets, …)."""

    def admit(self, n_rows: int, ctx: DefenseContext) -> None:
        """Count ``n_rows`` queries for ``ctx.client_id``; raise ``RateLimited`` to refuse them."""

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        """Return the defended answers; must keep the array's shape."""
        return answers

    def forget(self, client_id: str, store: StateStore) -> None:
        """Delete what the stage keeps about an idle client, except what must outlive idling:
        its status, alerts and quota (see :class:`~modeltheft.defenses.guarded.GuardedModel`)."""

    def describe(self) -> dict[str, object]:
        """Public description (name only: parameters may be secret)."""
        return {"name": self.name}


STAGES: Registry[Stage] = Registry("defense stage")
"""Every stage by its registered name (``type`` in a TOML ``[[stages]]`` table)."""


class AdmissionStage(Stage):
    """A stage that acts only before the model runs (rate limits)."""

    keeps_argmax = True
    keeps_simplex = True


class OutputStage(Stage):
    """A stage that rewrites the probabilities returned to the client."""


_Plan = tuple[tuple[int, ...], list[Stage], list[Stage], bool, list[Stage]]
"""A pipeline's stage identities, its stages that admit, that transform, whether one grades a
strict client's rows, and the stages themselves (held, so no identity is reused)."""


class Pipeline:
    """An ordered list of stages: every ``admit`` runs first, then every ``transform``, in order."""

    def __init__(self, stages: Sequence[Stage] = (), name: str = "custom") -> None:
        self.stages = list(stages)
        self.name = name
        self._plan: _Plan | None = None

    def _planned(self) -> tuple[list[Stage], list[Stage], bool]:
        """The stages with an ``admit`` of their own, those with a ``transform`` of their
        own, and whether one grades a strict client's rows: worked out again only when the
        stages change (a request skips the no-op calls)."""
        ids = tuple(map(id, self.stages))  # identities: the plan holds them, none is reused
        plan = self._plan
        if plan is None or plan[0] != ids:
            stages = list(self.stages)
            admits = [s for s in stages if type(s).admit is not Stage.admit]
            transforms = [s for s in stages if type(s).transform is not Stage.transform]
            graded = any(s.grades_strict for s in stages)
            plan = self._plan = (ids, admits, transforms, graded, stages)
        return plan[1], plan[2], plan[3]

    @property
    def remembers_clean(self) -> bool:
        """Whether a client's rows answered under the normal policy are worth remembering
        (:meth:`DefenseContext.remember_clean`): some stage may put it under the strict policy
        (an ``on_alert`` parameter) or grades a strict client's rows."""
        return any(
            stage.grades_strict or "on_alert" in stage._parameter_constraints
            for stage in self.stages
        )

    @property
    def stage_names(self) -> list[str]:
        """Names of the stages, in order."""
        return [stage.name for stage in self.stages]

    def setup(self, env: StageEnv) -> None:
        """Prepare every stage (once, before serving)."""
        for stage in self.stages:
            stage.setup(env)

    def forget(self, client_id: str, store: StateStore) -> None:
        """Evict an idle client's state from every stage, and the rows it sent while clean."""
        for stage in self.stages:
            stage.forget(client_id, store)
        current = generation(store.get(served_key(client_id)))
        store.delete([seen_key(client_id, g) for g in range(max(0, current - 2), current + 1)])

    def admit(self, n_rows: int, ctx: DefenseContext) -> None:
        """Run every stage's admission; the first refusal raises."""
        for stage in self._planned()[0]:
            stage.admit(n_rows, ctx)

    def transform(
        self,
        probabilities: np.ndarray,
        ctx: DefenseContext,
        suspicious: np.ndarray | None = None,
        strict: bool = False,
    ) -> Answers:
        """Run every stage over the victim's ``(n, k)`` probabilities.

        ``suspicious`` marks rows known to be suspicious before any stage runs; ``strict``
        says the client is already under the strict policy (see :meth:`Answers.escalated`).
        """
        _, transforms, graded = self._planned()
        original = np.array(probabilities, dtype=float)
        original.flags.writeable = False
        answers = Answers(original, original.copy(), suspicious=suspicious, graded=graded)
        if strict:
            answers = answers.escalated(ctx)
        for stage in transforms:
            answers = stage.transform(answers, ctx)
        return answers
