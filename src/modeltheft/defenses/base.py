"""Defense stages and the pipeline that runs them for each request.

Two kinds of stage: an *admission* stage decides, before the model is called, whether a
client's queries are answered at all (it may raise :class:`RateLimited`); an *output* stage
rewrites the ``(n, k)`` probability array that the victim produced.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from modeltheft.state.base import StateStore


@dataclass(frozen=True)
class DefenseContext:
    """What a stateful stage knows of a request: who asks, with which rng, where state lives."""

    client_id: str
    rng: np.random.Generator
    store: StateStore


@dataclass(frozen=True)
class Answers:
    """The answers to one batch as they pass through the output stages.

    ``original`` is the victim's own probability array and never changes; ``probabilities`` is
    the current, defended one. ``expose_probabilities`` is False once a stage decides that only
    labels may leave the service.
    """

    original: np.ndarray
    probabilities: np.ndarray
    expose_probabilities: bool = True

    @property
    def labels(self) -> np.ndarray:
        """Column index of each row's top probability (first one on ties)."""
        return np.argmax(self.probabilities, axis=1)

    def with_probabilities(self, probabilities: np.ndarray) -> "Answers":
        """A copy with new probabilities."""
        return replace(self, probabilities=probabilities)


class Stage(ABC):  # noqa: B024 - abstract through its two subclasses
    """Common manners of all stages: a registered name and claims the contract tests check."""

    name: str = "stage"
    paper: str = ""
    keeps_argmax: bool = False
    """The stage never changes a row's top class."""
    keeps_simplex: bool = False
    """Given rows that sum to 1, the stage returns rows that sum to 1."""

    def describe(self) -> dict[str, object]:
        """Public description (name only: parameters may be secret)."""
        return {"name": self.name}


class AdmissionStage(Stage):
    """A stage that may refuse a client's queries before the model runs."""

    keeps_argmax = True
    keeps_simplex = True

    @abstractmethod
    def admit(self, n_rows: int, ctx: DefenseContext) -> None:
        """Count ``n_rows`` queries for ``ctx.client_id``; raise ``RateLimited`` to refuse them."""


class OutputStage(Stage):
    """A stage that rewrites the probabilities returned to the client."""

    @abstractmethod
    def transform(self, answers: Answers, rng: np.random.Generator) -> Answers:
        """Return the defended answers; must keep the array's shape."""


class Pipeline:
    """An ordered list of stages: admission stages run first, then output stages, in order."""

    def __init__(self, stages: Sequence[Stage] = (), name: str = "custom") -> None:
        self.stages = list(stages)
        self.name = name

    @property
    def stage_names(self) -> list[str]:
        """Names of the stages, in order."""
        return [stage.name for stage in self.stages]

    def admit(self, n_rows: int, ctx: DefenseContext) -> None:
        """Run every admission stage; the first refusal raises."""
        for stage in self.stages:
            if isinstance(stage, AdmissionStage):
                stage.admit(n_rows, ctx)

    def transform(self, probabilities: np.ndarray, rng: np.random.Generator) -> Answers:
        """Run every output stage over the victim's ``(n, k)`` probabilities."""
        original = np.array(probabilities, dtype=float)
        original.flags.writeable = False
        answers = Answers(original=original, probabilities=original.copy())
        for stage in self.stages:
            if isinstance(stage, OutputStage):
                answers = stage.transform(answers, rng)
        return answers
