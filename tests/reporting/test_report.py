"""``modeltheft report``: a real tiny sweep as HTML, Markdown and CSV, and in Chromium."""

import csv
import json
import re
import shutil
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from modeltheft.cli.app import main
from modeltheft.errors import ConfigError
from modeltheft.experiments.results import ResultsStore
from modeltheft.experiments.run import run_task
from modeltheft.experiments.spec import Task
from modeltheft.experiments.sweep import sweep
from modeltheft.reporting.report import Stat, build_report, read_records
from tests.reporting.browser import load, need_chromium

EVIL = "<script>alert(1)</script>"
SPEC = f"""
name = "tiny & <b>bold</b>"
seed = 3
seeds = 2
budgets = [60, 100]
defenses = ["none", "recommended", {{ name = "{EVIL}", stages = [] }}]

[[attacks]]
name = "lab"
strategy = "owasp-synthetic"
batch_size = 20
"""
FAILED_ERROR = "only 3 of 60 queries were answered (need 51) <i>boom</i>"
HEADINGS = [
    "Overview",
    "Fidelity against queries, per attack",
    "Fidelity and accuracy per defense, attack and budget",
    "Defenses: honest accuracy against thief fidelity",
    "Detection delays",
    "Watermark evidence",
    "Sample digits: victim and stolen labels",
    "Failed runs",
]


class InlineEngine:
    """Runs tasks in this process, one after the other (no process start-up to pay)."""

    def describe(self) -> str:
        return "this process"

    def run(self, tasks: Sequence[Task], on_result: Callable[[dict[str, Any]], None]) -> None:
        for task in tasks:
            on_result(run_task(task))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real runs (3 defenses × 2 budgets × 2 seeds) and one failed record."""
    folder = tmp_path_factory.mktemp("sweep")
    spec = folder / "tiny.toml"
    spec.write_text(SPEC)
    out = folder / "run"
    summary = sweep(spec, out, InlineEngine(), console=Console(quiet=True))
    assert summary.ran == 12 and summary.failed == 0
    store = ResultsStore(out)
    failed = json.loads(json.dumps(store.records()[0]))
    failed["task"]["seed_index"] = 7
    failed |= {"id": "f" * 16, "metrics": {}, "status": "failed", "error": FAILED_ERROR}
    store.append(failed)
    return out


@pytest.fixture(scope="module")
def report(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_report(run_dir, tmp_path_factory.mktemp("report"))


def _ok(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in ResultsStore(run_dir).records() if r["status"] == "ok"]


def test_writes_html_markdown_csv_and_pngs(report: dict[str, Path]) -> None:
    assert set(report) == {"html", "md", "csv", "fidelity", "pareto", "samples"}
    for key in ("fidelity", "pareto", "samples"):
        assert report[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert report[key].parent == report["md"].parent
    markdown = report["md"].read_text()
    for key in ("fidelity", "pareto", "samples"):
        assert f"]({report[key].name})" in markdown


def test_html_is_self_contained_and_small(report: dict[str, Path]) -> None:
    html = report["html"].read_text()
    assert "http://" not in html and "https://" not in html
    for attribute in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html):
        assert attribute.startswith(("data:", "#")), attribute
    assert '<link rel="stylesheet"' not in html and "<script" not in html.lower()
    assert "default-src 'none'" in html  # CSP: no fetch, no script, even if escaping failed
    assert html.count("<svg") == 2 and html.count("data:image/png;base64,") == 3 * 16
    assert report["html"].stat().st_size < 1_000_000


def test_html_sections_and_numbers_match_the_records(
    report: dict[str, Path], run_dir: Path
) -> None:
    html = report["html"].read_text()
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in html.replace("&#39;", "'")
    assert "13: 12 ok, 1 failed" in html
    records = _ok(run_dir)
    for defense in ("none", "recommended"):
        for budget in (60, 100):
            values = [
                r["metrics"]["fidelity"]
                for r in records
                if r["task"]["defense"]["name"] == defense and r["task"]["budget"] == budget
            ]
            assert len(values) == 2
            cell = f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
            assert cell in html and cell in report["md"].read_text()
    # watermark evidence: the recommended preset watermarks; worst p of the copies at 100
    copies = [
        r["metrics"]["watermark_p"]
        for r in records
        if r["task"]["defense"]["name"] == "recommended" and r["task"]["budget"] == 100
    ]
    assert f"{max(copies):.1e}" in html
    # detection: the recommended preset flags every thief
    flagged = [r["metrics"]["flagged_after"] for r in records if r["metrics"]["detectors"]]
    assert len(flagged) == 4 and "4/4 (100%)" in html
    assert f'<td class="num">{statistics.median(flagged):.0f}</td>' in html
    # failed runs are listed with their (escaped) error
    assert "f" * 16 in html and "&lt;i&gt;boom&lt;/i&gt;" in html


def test_every_spec_string_is_escaped(report: dict[str, Path]) -> None:
    html = report["html"].read_text()
    assert EVIL not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "tiny &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    markdown = report["md"].read_text()
    assert EVIL not in markdown and "<i>" not in markdown and "<b>" not in markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown


def test_sample_digits_show_the_median_run_and_disagreements(
    report: dict[str, Path], run_dir: Path
) -> None:
    html = report["html"].read_text()
    runs = sorted(
        (
            r
            for r in _ok(run_dir)
            if r["task"]["defense"]["name"] == "none" and r["task"]["budget"] == 100
        ),
        key=lambda r: (r["metrics"]["fidelity"], r["task"]["seed_index"]),
    )
    median = runs[0]  # of two runs, the lower one
    assert f"run {median['id']}" in html
    samples = median["metrics"]["samples"]
    differ = sum(v != s for v, s in zip(samples["victim"], samples["stolen"], strict=True))
    section = html[html.index('id="samples"') : html.index('id="failed"')]
    assert f"agrees on {16 - differ}/16 shown" in section
    assert section.count('class="digit differs"') >= differ


def test_csv_has_one_row_per_run(report: dict[str, Path], run_dir: Path) -> None:
    with report["csv"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = {r["id"]: r for r in ResultsStore(run_dir).records()}
    assert len(rows) == len(records) == 13
    for row in rows:
        record = records[row["id"]]
        assert int(row["budget"]) == record["task"]["budget"]
        assert int(row["seed_index"]) == record["task"]["seed_index"]
        assert row["strategy"] == "owasp-synthetic" and row["batch_size"] == "20"
        if record["status"] == "ok":
            assert float(row["fidelity"]) == record["metrics"]["fidelity"]
            assert float(row["seconds"]) == pytest.approx(record["timings"]["seconds"], abs=1e-4)
        else:
            assert row["error"] == FAILED_ERROR and row["fidelity"] == ""
    assert {row["defense"] for row in rows} == {"none", "recommended", EVIL}


def test_reading_never_cuts_a_line_being_written(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    results = copy / "results.jsonl"
    torn = results.read_text() + '{"id": "half'
    results.write_text(torn)
    assert len(read_records(copy)) == 13
    assert results.read_text() == torn


def test_empty_and_missing_run_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no run records in"):
        build_report(tmp_path)
    (tmp_path / "results.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match=f"no run records in {re.escape(str(tmp_path))}"):
        build_report(tmp_path)
    with pytest.raises(ConfigError, match="run folder not found"):
        build_report(tmp_path / "nope")


def test_stat_confidence_interval() -> None:
    stat = Stat.of([0.2, 0.4, None, 0.6])
    assert (stat.n, stat.mean, stat.std) == (3, pytest.approx(0.4), pytest.approx(0.2))
    assert stat.ci == pytest.approx(4.302653 * 0.2 / 3**0.5, rel=1e-5)
    assert stat.pm() == "0.400 ± 0.200" and stat.interval() == "0.400 [0.000, 0.897]"
    assert Stat.of([0.5]).interval() == "0.500" and Stat.of([]).pm() == "—"


def test_cli_report_and_exit_codes(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("report.html", "report.md", "runs.csv"):
        assert (out / name).is_file() and str(out / name) in printed
    for argv, message in (
        (["report", str(tmp_path / "missing")], "run folder not found"),
        (["report", str(out)], "no run records in"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_html_loads_in_headless_chromium(report: dict[str, Path], tmp_path: Path) -> None:
    """Debian's chromium (``apt-get install chromium``; .ci/run installs it) renders the page."""
    need_chromium()
    shot = tmp_path / "report.png"
    page = load(report["html"], shot)
    assert page["problems"] == [] and page["links"] == 0
    assert page["headings"] == HEADINGS
    assert page["height"] > 1500 and page["broken"] == 0
    assert len(page["svgs"]) == 2 and min(page["svgs"]) > 100
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    assert page["load"] < 1000, f"loaded in {page['load']:.0f} ms (wall {page['wall']:.2f} s)"


def test_demo_report_writes_the_lab_run_as_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--repeats", "1", "--budget", "60", "--out", str(out), "--report"]
    assert main(argv) == 0
    folder = out / "report"
    assert f"report: {folder / 'report.html'}" in capsys.readouterr().out
    records = ResultsStore(folder).records()
    assert [r["task"]["defense"]["name"] for r in records] == ["none", "lab"]
    lab = json.loads((out / "results.json").read_text())
    for record, scenario in zip(records, lab["scenarios"], strict=True):
        task, metrics = record["task"], record["metrics"]
        assert task["attack"]["strategy"] == "owasp-synthetic" and task["budget"] == 60
        assert task["seed_index"] == 0 and record["status"] == "ok"
        assert metrics["fidelity"] == scenario["runs"][0]["fidelity"]
        assert metrics["curve"][-1] == {
            "spent": 60,
            "fidelity": metrics["fidelity"],
            "accuracy": metrics["accuracy"],
        }
        assert len(metrics["samples"]["stolen"]) == 16
        honest = lab["honest_client"][
            {"none": "no_defense", "lab": "lab_defenses"}[task["defense"]["name"]]
        ]
        assert metrics["honest_accuracy"] == honest["useful_fraction"]
    html = (folder / "report.html").read_text()
    assert "“demo”" in html and "2: 2 ok, 0 failed" in html
