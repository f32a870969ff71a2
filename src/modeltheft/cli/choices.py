"""Option help that lists the registered names, read from the registries when help is shown.

The registries live in modules that import scikit-learn and the attacks; reading them only
for ``--help`` keeps every other command (and each ``serve`` worker, which imports this
package) as quick to start as before. A command declares ``cls=with_choices(...)``, mapping
its parameters to the functions below.
"""

from collections.abc import Callable
from typing import Any

from rich.markup import escape
from typer.core import TyperCommand

Choices = Callable[[], str]


def _names(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(names)


def strategies() -> str:
    """The registered strategies (recipes)."""
    from modeltheft.attacks.recipes import STRATEGIES

    return f"Choices: {_names(STRATEGIES.names())}."


def substitutes() -> str:
    """The registered substitutes, and what ``cnn`` needs."""
    from modeltheft.attacks.cnn import INSTALL_HINT
    from modeltheft.attacks.substitutes import SUBSTITUTES

    return f"Choices: {_names(SUBSTITUTES.names())}; {INSTALL_HINT}."


def sources() -> str:
    """The registered query sources (a strategy's ``pool=`` parameter)."""
    from modeltheft.attacks.sources import SOURCES

    return f"Sources (pool=): {_names(SOURCES.names())}."


def label_modes() -> str:
    """The label modes an attack learns from."""
    from modeltheft.attacks.labels import LABEL_MODES

    return f"Choices: {_names(LABEL_MODES)}."


def protocols() -> str:
    """The prediction API protocols an oracle speaks."""
    from modeltheft.oracle import PROTOCOLS

    return f"Choices: {_names(PROTOCOLS.names())}."


def upstream_protocols() -> str:
    """The protocols a gateway's upstream may speak."""
    from modeltheft.service.upstream import UPSTREAM_PROTOCOLS

    return f"Choices: {_names(sorted(UPSTREAM_PROTOCOLS))}."


def tasks() -> str:
    """The built-in tasks."""
    from modeltheft.tasks import BUILTIN

    return f"Built-in: {_names(list(BUILTIN))}."


def families() -> str:
    """The victim model families ``train`` knows."""
    from modeltheft.victim.train import FAMILIES

    return f"Choices: {_names(FAMILIES.names())}."


def presets() -> str:
    """The defense presets."""
    from modeltheft.defenses import preset_names

    return f"Presets: {_names(preset_names())}."


def with_choices(choices: dict[str, Choices]) -> type[TyperCommand]:
    """A command class whose help appends ``choices[name]()`` to the help of option ``name``."""

    class Command(TyperCommand):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            for param in self.params:
                fill = choices.get(param.name or "")
                if fill is not None and hasattr(param, "help"):
                    _append(param, escape(fill()))
            super().format_help(ctx, formatter)

    return Command


def _append(option: Any, text: str) -> None:
    """Add ``text`` to the option's help once (a command object may print its help twice)."""
    done: Any = getattr(option, "_choices_added", None)
    if done == text:
        return
    option.help = f"{option.help} {text}" if option.help else text
    option._choices_added = text
