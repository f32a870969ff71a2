"""One way to register plugins and check their parameters, for every plugin kind.

Tasks' strategies (sources, selectors, recipes), defense stages, substitutes, victim families
and oracle protocols are all kept in a :class:`Registry` and built by name from keyword
parameters. A plugin declares its parameters as constraints, the way scikit-learn's
``_parameter_constraints`` does, so every validation message has one wording::

    class Gaussian(Plugin):
        _parameter_constraints = {"sigma": [Interval(float, 0, None, closed="left")]}

    "source 'gaussian': sigma must be a number in [0, inf), got -1.0"
"""

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from modeltheft.errors import ConfigError

T = TypeVar("T")


class Constraint:
    """A condition a parameter value may satisfy, and how to say it."""

    def check(self, value: Any) -> bool:
        """Whether ``value`` satisfies the constraint."""
        raise NotImplementedError

    def __str__(self) -> str:  # pragma: no cover - every subclass says itself
        return type(self).__name__


class Interval(Constraint):
    """A number of ``kind`` (int or float) in a range; ``None`` ends are unbounded.

    ``closed`` is ``"both"``, ``"left"``, ``"right"`` or ``"neither"``. Booleans never pass.
    """

    def __init__(
        self, kind: type, low: float | None, high: float | None, closed: str = "both"
    ) -> None:
        self.kind = kind
        self.low = low
        self.high = high
        self.closed = closed

    def check(self, value: Any) -> bool:
        wanted = Integral if self.kind is int else Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        low_ok = self.low is None or (
            value >= self.low if self.closed in ("both", "left") else value > self.low
        )
        high_ok = self.high is None or (
            value <= self.high if self.closed in ("both", "right") else value < self.high
        )
        return low_ok and high_ok

    def __str__(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.low is None and self.high is None:
            return noun
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{noun} in {left}{low}, {high}{right}"


class Options(Constraint):
    """One of a fixed set of values."""

    def __init__(self, *values: Any) -> None:
        self.values = values

    def check(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


class InstanceOf(Constraint):
    """An instance of ``kind`` (booleans only where ``kind`` is ``bool``)."""

    def __init__(self, kind: type | tuple[type, ...], description: str | None = None) -> None:
        self.kind = kind
        self.description = description

    def check(self, value: Any) -> bool:
        if isinstance(value, bool) and self.kind is not bool:
            return False
        return isinstance(value, self.kind)

    def __str__(self) -> str:
        if self.description:
            return self.description
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        return " or ".join(f"a {k.__name__}" for k in kinds)


class Rows(Constraint):
    """A finite, numeric 2-D array (or a path to a ``.npy`` file holding one)."""

    def check(self, value: Any) -> bool:
        if isinstance(value, str | Path):
            return str(value).endswith(".npy")
        try:
            array = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            return False
        return array.ndim == 2 and len(array) > 0 and bool(np.isfinite(array).all())

    def __str__(self) -> str:
        return "a finite 2-D array of rows or a .npy file"


class Satisfies(Constraint):
    """A value for which ``predicate`` is true, described by ``description``."""

    def __init__(self, predicate: Callable[[Any], bool], description: str) -> None:
        self.predicate = predicate
        self.description = description

    def check(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except Exception:  # a predicate that cannot judge a value rejects it
            return False

    def __str__(self) -> str:
        return self.description


BOOL = InstanceOf(bool)
"""``True`` or ``False``."""


def _normalise(constraint: Any) -> Constraint | None:
    if constraint is None:
        return None
    if isinstance(constraint, Constraint):
        return constraint
    if isinstance(constraint, type):
        return InstanceOf(constraint)
    raise TypeError(f"not a parameter constraint: {constraint!r}")


def check_params(
    params: Mapping[str, Any], constraints: Mapping[str, list[Any]], what: str
) -> None:
    """Raise a ConfigError for the first parameter that meets none of its constraints.

    A constraint list may contain ``None`` (the value may be None), a type, or a
    :class:`Constraint`. Parameters without constraints are not checked.
    """
    for name, allowed in constraints.items():
        if name not in params:
            continue
        value = params[name]
        options = [_normalise(c) for c in allowed]
        if value is None and None in options:
            continue
        if any(c is not None and c.check(value) for c in options):
            continue
        said = " or ".join(str(c) for c in options if c is not None)
        if None in options:
            said += " or None"
        shown = repr(value) if not isinstance(value, np.ndarray) else f"an array {value.shape}"
        raise ConfigError(f"{what}: {name} must be {said}, got {shown}")


class Plugin:
    """Base of registered plugins: constructors store keyword arguments, and that is all.

    ``name`` is the registered name, ``paper`` the one-line citation, ``kind`` what the
    registry calls it; ``_parameter_constraints`` declares what each argument may be.
    """

    name: ClassVar[str] = "plugin"
    kind: ClassVar[str] = "plugin"
    paper: ClassVar[str] = ""
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {}

    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's keyword parameters."""
        signature = inspect.signature(cls.__init__)
        return [p for p in signature.parameters if p not in ("self", "args", "kwargs")]

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, read back from the attributes they were stored in."""
        return {name: getattr(self, name) for name in self.param_names() if hasattr(self, name)}

    def validate_params(self) -> None:
        """Check every parameter against ``_parameter_constraints`` (a ConfigError if not)."""
        check_params(self.get_params(), self._parameter_constraints, f"{self.kind} {self.name!r}")


class Registry(Generic[T]):
    """Named plugins of one kind: classes (built and validated) or factory functions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, entry: Any = None, *, name: str | None = None) -> Any:
        """Register a class under its ``name`` (or ``name=``); usable as a decorator."""

        def add(item: Any) -> Any:
            key = name or getattr(item, "name", None)
            if not isinstance(key, str) or not key:
                raise TypeError(f"{item!r} has no name to register under")
            if key in self._entries and self._entries[key] is not item:
                raise TypeError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = item
            return item

        return add if entry is None else add(entry)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> Callable[..., T]:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, Callable[..., T]]]:
        """(name, entry) pairs in registration order."""
        return list(self._entries.items())

    def get(self, name: str) -> Callable[..., T]:
        """The entry registered as ``name``, or a ConfigError listing the choices."""
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}"
            )
        return self._entries[name]

    def build(self, name: str, params: Mapping[str, Any] | None = None) -> T:
        """``entry(**params)``, refusing unknown parameters by name and validating the rest."""
        entry = self.get(name)
        params = dict(params or {})
        if isinstance(entry, type) and entry.__init__ is object.__init__:
            has_var_kw, allowed = False, []  # a class that takes no parameters
        else:
            target = entry.__init__ if isinstance(entry, type) else entry
            signature = inspect.signature(target)
            has_var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
            allowed = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
        unknown = sorted(set(params) - set(allowed))
        if unknown and not has_var_kw:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(
                f"{self.kind} {name!r} has no parameter {', '.join(unknown)} (it takes: {known})"
            )
        constraints = getattr(entry, "_parameter_constraints", None)
        if constraints:
            check_params(params, constraints, f"{self.kind} {name!r}")
        built = entry(**params)
        if isinstance(built, Plugin):
            built.validate_params()
        return built


def build(registry: Mapping[str, type[T]], name: str, params: Mapping[str, Any], kind: str) -> T:
    """``registry[name](**params)`` for a plain mapping of classes (see :class:`Registry`)."""
    temporary: Registry[T] = Registry(kind)
    for key, entry in registry.items():
        temporary.register(entry, name=key)
    return temporary.build(name, params)
