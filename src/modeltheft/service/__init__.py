"""The HTTP prediction service.

``create_app`` and ``Settings`` are imported on first use: ``serve --workers`` hands each worker
a uvicorn config that names :mod:`modeltheft.service.timeouts`, and a worker must answer
uvicorn's health ping before it loads scikit-learn, SciPy and onnxruntime (issue 14).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modeltheft.service.app import create_app
    from modeltheft.service.settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from modeltheft.service.app import create_app

        return create_app
    if name == "Settings":
        from modeltheft.service.settings import Settings

        return Settings
    raise AttributeError(f"module 'modeltheft.service' has no attribute {name!r}")
