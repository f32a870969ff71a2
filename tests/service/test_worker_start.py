"""A `serve --workers` worker answers uvicorn's health ping before its heavy imports.

uvicorn unpickles each worker's config (which names ``modeltheft.service.timeouts``, the HTTP
protocol with the header timeout) before it starts the thread that answers the ping; that
import used to pull in scikit-learn and SciPy through ``modeltheft.service``'s package
import of ``create_app`` (2.2 s here, and workers killed on a busy host)."""

import subprocess
import sys

CHECK = """
import pickle, sys
from modeltheft.service.timeouts import header_timeout_protocol
protocol = pickle.loads(pickle.dumps(header_timeout_protocol(10.0)))
heavy = sorted(m for m in ("sklearn", "scipy", "onnxruntime", "pyarrow") if m in sys.modules)
print(",".join(heavy))
"""


def test_the_worker_config_imports_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", out.stdout


def test_the_package_still_offers_create_app_and_settings() -> None:
    from modeltheft import service
    from modeltheft.service.app import create_app
    from modeltheft.service.settings import Settings

    assert service.create_app is create_app and service.Settings is Settings
