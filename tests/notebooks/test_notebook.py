"""The lab notebook: stored clean, installs from the repository, and runs end to end.

The notebook is executed once per session in a fresh kernel. The kernel spec is written into a
temporary Jupyter path and points at this interpreter, so the test needs nothing registered by
hand (a fresh clone after ``pip install -e '.[test]'`` is enough).
"""

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOK = NOTEBOOKS / "ml05_model_theft_lab.ipynb"

ATTACK = re.compile(
    r"^(?P<attack>lab|active) attack, defense (?P<defense>\w+): "
    r"stolen accuracy (?P<accuracy>[\d.]+), fidelity (?P<fidelity>[\d.]+), "
    r"(?P<answered>\d+)/(?P<sent>\d+) queries answered$",
    re.MULTILINE,
)
HONEST = re.compile(
    r"^honest client, defense (?P<defense>\w+): (?P<answered>\d+)/(?P<sent>\d+) answered, "
    r"[\d.]+ of answers correct, accuracy (?P<accuracy>[\d.]+), "
    r"same answer as the victim (?P<same>[\d.]+)$",
    re.MULTILINE,
)
ALERT = re.compile(
    r"^alert: client=(?P<client>\S+) detector=(?P<detector>\S+) after_queries=(?P<after>\d+)",
    re.MULTILINE,
)
WATERMARK = re.compile(
    r"^watermark, (?P<client>\S+): stolen copy p = (?P<copy>\S+) \(\d+/\d+ watermarks "
    r"reproduced\); independent model p = (?P<independent>\S+) ",
    re.MULTILINE,
)


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nbformat.NotebookNode]:
    """The notebook after a full run in a fresh ``python3`` kernel of this interpreter."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    jupyter = tmp_path_factory.mktemp("jupyter")
    install(kernel_name="python3", prefix=str(jupyter))  # argv[0] is sys.executable
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JUPYTER_PATH", str(jupyter / "share" / "jupyter"))
        env.setenv("JUPYTER_RUNTIME_DIR", str(jupyter / "runtime"))
        env.setenv("JUPYTER_PLATFORM_DIRS", "1")
        spec = KernelSpecManager().get_kernel_spec("python3")
        assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()
        client = NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        )
        client.execute()
    yield nb


@pytest.fixture(scope="module")
def text(executed: nbformat.NotebookNode) -> str:
    """Everything the notebook printed to stdout."""
    return "".join(
        output.get("text", "")
        for cell in code_cells(executed)
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


def test_stored_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None


def test_first_code_cell_installs_from_the_repository() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = code_cells(nb)[0].source
    assert 'REPOSITORY = "https://github.com/' in first
    assert '[sys.executable, "-m", "pip", "install"' in first
    assert '"-e", str(root)' in first and 'root / "pyproject.toml"' in first
    assert 'f"git+{REPOSITORY}"' in first
    assert "%" not in first and "!pip" not in first  # plain Python, no notebook magics
    notes = " ".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    assert "Colab" in notes and "`REPOSITORY`" in notes


def test_notebook_runs_without_errors_and_draws_its_plots(executed: nbformat.NotebookNode) -> None:
    outputs = [output for cell in code_cells(executed) for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5


def test_victim_and_api(text: str) -> None:
    victim = float(re.search(r"^victim: test accuracy ([\d.]+)", text, re.MULTILINE).group(1))
    assert victim >= 0.95
    assert "POST /v1/predict (test digit 0, truly a 6) -> 200" in text
    assert "with a wrong key -> 401" in text


def test_attacks_and_defenses_give_plausible_numbers(text: str) -> None:
    attacks = {(m["attack"], m["defense"]): m for m in ATTACK.finditer(text)}
    assert set(attacks) == {
        (a, d) for a in ("lab", "active") for d in ("none", "lab", "recommended")
    }
    fid = {key: float(m["fidelity"]) for key, m in attacks.items()}
    assert 0.2 <= fid["lab", "none"] <= 0.8
    assert int(attacks["lab", "none"]["answered"]) == 300
    assert int(attacks["lab", "lab"]["answered"]) < 300  # the rate limit refused some
    assert fid["lab", "lab"] < fid["lab", "none"]
    assert fid["active", "none"] >= 0.8
    assert fid["lab", "recommended"] <= 0.2 and fid["active", "recommended"] <= 0.2
    assert int(attacks["lab", "recommended"]["answered"]) == 300  # the thief is never told

    honest = {m["defense"]: m for m in HONEST.finditer(text)}
    assert set(honest) == {"none", "lab", "recommended"}
    assert float(honest["none"]["accuracy"]) >= 0.95
    assert float(honest["lab"]["accuracy"]) < 0.7  # the lab's defenses charge honest clients
    assert int(honest["recommended"]["answered"]) == 540
    assert float(honest["recommended"]["accuracy"]) >= 0.97
    assert float(honest["recommended"]["same"]) >= 0.99


def test_recommended_flags_the_thieves_and_its_watermark_convicts_the_copies(text: str) -> None:
    assert "alerts after the honest client: []" in text
    flagged = {m["client"]: int(m["after"]) for m in ALERT.finditer(text)}
    assert set(flagged) == {"lab-thief", "active-thief"}
    assert all(after <= 50 for after in flagged.values())
    verdicts = {m["client"]: m for m in WATERMARK.finditer(text)}
    assert set(verdicts) == {"lab-thief", "active-thief"}
    for verdict in verdicts.values():
        assert float(verdict["copy"]) < 1e-6
        assert float(verdict["independent"]) > 0.01


def test_every_server_is_stopped(text: str) -> None:
    for name in ("none", "lab", "recommended"):
        assert f"stopped the {name!r} server" in text
