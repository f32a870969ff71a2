"""modeltheft: model extraction attacks and defenses for prediction APIs (OWASP ML05:2023)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modeltheft")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
