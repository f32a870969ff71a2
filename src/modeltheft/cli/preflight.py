"""Checks a command runs before its costly or secret-dependent steps, so that the first error
names the real problem: ``serve`` checks its model, task, defense and state before its keys."""

from pathlib import Path

from modeltheft.errors import ModelIntegrityError


def check_serve_inputs(
    model: Path | None, task: str | None, defense: str, state: str, gateway: bool = False
) -> None:
    """Raise the one-line error of a missing model file, an unknown task, a bad defense or a
    bad state URL; nothing is created (a missing SQLite file is left for ``serve`` to create,
    and an existing one is only opened read-only to see that it is a database). A gateway
    has no model file (``Settings`` refuses ``--model`` with ``--upstream``)."""
    from modeltheft.defenses import load_pipeline
    from modeltheft.state import open_store, parse_store_url
    from modeltheft.tasks import get_task

    if model is not None and not gateway and not model.is_file():
        raise ModelIntegrityError(f"model file not found: {model}")
    if task is not None:
        get_task(task)
    load_pipeline(defense)
    kind, target = parse_store_url(state)
    if kind == "sqlite" and not Path(target).exists():
        return
    open_store(state, read_only=True).close()  # a Redis is reached, a file is a database
