"""Task-aware reports: a tabular run folder, an image task of its own shape, mixed tasks."""

import re
from pathlib import Path

import numpy as np
import pytest

from modeltheft.reporting.report import build_report
from tests.reporting import handmade
from tests.reporting.browser import load, need_chromium

WINE = ["class_0", "class_1", "class_2"]


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run_dir = tmp_path_factory.mktemp("wine")
    return build_report(handmade.write(run_dir, handmade.records("wine", WINE, tabular=True)))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run_dir = tmp_path_factory.mktemp("mixed")
    digits = handmade.records("digits", list(range(10)), image_shape=[8, 8])
    tabular = handmade.records("wine", [0, 1, 2], tabular=True, seed=1)
    return build_report(handmade.write(run_dir, digits, tabular))


def _headings(html: str) -> list[str]:
    return [h.replace("&#39;", "'") for h in re.findall(r"<h2>(.*?)</h2>", html)]


def test_tabular_report_has_no_sample_images_and_a_confusion_figure(
    wine: dict[str, Path],
) -> None:
    assert set(wine) == {"html", "md", "csv", "fidelity", "pareto", "confusion"}
    html = wine["html"].read_text()
    assert "<img" not in html and 'class="digit' not in html
    assert _headings(html) == [
        "Overview",
        "Fidelity against queries, per attack",
        "Fidelity and accuracy per defense, attack and budget",
        "Defenses: honest accuracy against thief fidelity",
        "Detection delays",
        "Watermark evidence",
        "Per-class agreement",
        "Failed runs",
    ]
    assert html.count("<svg") == 3 and 'aria-label="Victim&#39;s label' not in html
    section = html[html.index('id="classes"') : html.index('id="failed"')]
    assert "<svg" in section and all(
        f'<th class="num" scope="col">{c}</th>' in section for c in WINE
    )
    assert "wine (tabular)" in html and "54 evaluation rows" in html
    assert "540 test digits" not in html
    markdown = wine["md"].read_text()
    assert "Sample digits" not in markdown and "](confusion.png)" in markdown
    assert wine["confusion"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_figure_is_of_the_median_run(wine: dict[str, Path]) -> None:
    from modeltheft.reporting import statistics as st
    from modeltheft.reporting.records import load_sweep

    sweep, _ = load_sweep(wine["html"].parent)
    _, _, chosen = st.median_runs(sweep, "confusion")  # type: ignore[misc]
    html = wine["html"].read_text()
    figure = html[html.index('id="classes"') : html.index('id="failed"')]
    cells = re.findall(r"font-size: 7px[^>]*>(\d+)</text>", figure)
    expected = []
    for defense, run, of in chosen:
        assert f"{defense}: fidelity {run.metrics['fidelity']:.3f} (median of {of})" in figure
        expected += [str(v) for v in np.asarray(run.metrics["confusion"]["matrix"]).ravel()]
    assert cells == expected


def test_mixed_tasks_name_both(mixed: dict[str, Path]) -> None:
    html = mixed["html"].read_text()
    headings = _headings(html)
    for task in ("digits", "wine"):
        assert f"Fidelity against queries, per attack — task {task}" in headings
        assert f"Watermark evidence — task {task}" in headings
        assert mixed[f"fidelity-{task}"].name == f"fidelity_vs_queries-{task}.png"
    assert "Sample digits: victim and stolen labels — task digits" in headings
    assert "Per-class agreement — task wine" in headings
    assert "Per-class agreement — task digits" not in headings
    assert "digits (image), wine (tabular)" in html
    assert html.count("<img ") == 2 * 16  # digits only: 2 defenses × 16
    assert len(set(re.findall(r'\bid="([^"]+)"', html))) == len(re.findall(r'\bid="', html))
    markdown = mixed["md"].read_text()
    assert "## Per-class agreement — task wine" in markdown
    assert "| run | task | defense |" in markdown  # failed runs say their task
    assert "](sample_digits-digits.png)" in markdown and "](confusion-wine.png)" in markdown


def test_an_image_task_of_its_own_shape(tmp_path: Path) -> None:
    """Sample images come from the record's rows, in the task's (H, W, C) shape."""
    records = handmade.records("faces", [0, 1], image_shape=[4, 4, 3])
    rng = np.random.default_rng(0)
    for r in records:
        if r["status"] == "ok":
            r["metrics"]["samples"]["rows"] = rng.random((16, 48)).round(3).tolist()
    paths = build_report(handmade.write(tmp_path, records))
    html = paths["html"].read_text()
    assert "Sample images: victim and stolen labels" in _headings(html)
    assert html.count("<img ") == 2 * 16 and 'alt="evaluation image 1"' in html
    assert "](sample_digits.png)" in paths["md"].read_text()


def test_image_task_without_loadable_images_says_so(tmp_path: Path) -> None:
    paths = build_report(
        handmade.write(tmp_path, handmade.records("faces", [0, 1], image_shape=[4, 4]))
    )
    html = paths["html"].read_text()
    assert "<img" not in html and "recorded sample labels, but not the" in html


def test_mixed_report_loads_in_headless_chromium(mixed: dict[str, Path], tmp_path: Path) -> None:
    need_chromium()
    page = load(mixed["html"], tmp_path / "mixed.png")
    assert page["problems"] == [] and page["links"] == 0 and page["broken"] == 0
    assert len(page["svgs"]) == 5 and min(page["svgs"]) > 100 and page["images"] == 32
    assert page["headings"][-1] == "Failed runs" and len(page["headings"]) == 14
