"""A real KServe 0.21 ``kserve.Model`` server on loopback, as the target of `attack` over
KServe v1 (``POST /v1/models/{name}:predict``).

The server runs tests/servers/kserve_digits.py from ``.venv-kserve`` (see
:mod:`tests.servers.real`) on the session's digits victim, saved with joblib by the test itself.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import joblib
import pytest

from modeltheft.service.runner import BackgroundServer
from modeltheft.victim import LoadedVictim
from tests.conftest import KEYS
from tests.servers.real import free_port, running, same_attack_as_ours, venv_python

SCRIPT = Path(__file__).with_name("kserve_digits.py")


@pytest.fixture(scope="module")
def kserve(tmp_path_factory: pytest.TempPathFactory, victim: LoadedVictim) -> Iterator[str]:
    """The KServe model server on a free loopback port, gRPC off, serving ``digits`` (labels)
    and ``digits-proba`` (probabilities); its base URL once ``/v2/health/ready``."""
    python = venv_python("kserve")
    folder = tmp_path_factory.mktemp("kserve")
    joblib.dump(victim.model, folder / "victim.joblib")
    port = free_port()
    command = [str(python), str(SCRIPT), "--model_name", "digits"]
    command += ["--model_file", str(folder / "victim.joblib"), "--http_port", str(port)]
    command += ["--enable_grpc", "false", "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with running(command, f"{url}/v2/health/ready", folder / "kserve.log") as seconds:
        print(f"KServe ready after {seconds:.1f} s")
        yield url


@pytest.mark.parametrize(("model", "label_mode"), [("digits", "hard"), ("digits-proba", "soft")])
def test_attack_over_kserve_v1_gets_what_it_gets_from_our_server(
    kserve: str,
    live_server: Callable[..., BackgroundServer],
    victim_path: Path,
    tmp_path: Path,
    model: str,
    label_mode: str,
) -> None:
    """The same attack, same seed, against KServe and against our own `serve --defense none`
    with the same model: the same fidelity (±0.02)."""
    target = ["--target", kserve, "--protocol", "kserve-v1", "--model-name", model]
    ours = live_server("none").url
    same_attack_as_ours(tmp_path, "kserve", target, ours, KEYS["alice"], victim_path, label_mode)
