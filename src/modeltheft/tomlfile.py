"""Read a TOML configuration file; any problem is one ConfigError naming the file."""

import tomllib
from pathlib import Path
from typing import Any

from modeltheft.errors import ConfigError


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; a missing, unreadable or invalid file is a ConfigError."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
