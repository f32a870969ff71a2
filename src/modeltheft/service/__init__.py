"""The HTTP prediction service."""

from modeltheft.service.app import create_app
from modeltheft.service.settings import Settings

__all__ = ["Settings", "create_app"]
