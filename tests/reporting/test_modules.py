"""The report's parts on hand-made records: records, statistics, figures, rendering."""

import csv
import json
import shutil
import statistics
import xml.etree.ElementTree as ET
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from modeltheft.errors import ConfigError
from modeltheft.reporting import figures, render, sections, tables
from modeltheft.reporting import statistics as st
from modeltheft.reporting.records import DIGITS, load_sweep, read_records, task_info
from modeltheft.reporting.report import build_report
from tests.reporting import handmade

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def digits_dir(tmp_path: Path) -> Path:
    """Old-style digits records (no task named) and a torn last line."""
    return handmade.write(tmp_path / "digits", handmade.records(), torn=True)


# --------------------------------------------------------------------------- records


def test_records_skip_a_torn_line_and_keep_the_latest_per_id(digits_dir: Path) -> None:
    records = read_records(digits_dir)
    assert len(records) == 25 and records[-1]["status"] == "failed"
    path = digits_dir / "results.jsonl"
    first = json.loads(path.read_text().splitlines()[0])
    first["metrics"]["fidelity"] = 0.123
    path.write_text(path.read_text().rsplit("\n", 1)[0] + "\n" + json.dumps(first) + "\n")
    again = read_records(digits_dir)
    assert len(again) == 25 and again[0]["metrics"]["fidelity"] == 0.123


def test_bad_lines_and_records_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"results.jsonl:2 is not a JSON record"):
        read_records(tmp_path)
    path.write_text('{"no": "id"}\n')
    with pytest.raises(ConfigError, match=r"results.jsonl:1 has no run id"):
        read_records(tmp_path)
    path.write_text('{"id": "a", "task": {"defense": {"name": "none"}}}\n')
    with pytest.raises(ConfigError, match=r"run 'a' in .* is not a sweep record"):
        load_sweep(tmp_path)


def test_failed_runs_are_kept_apart(digits_dir: Path) -> None:
    sweep, _ = load_sweep(digits_dir)
    assert len(sweep.ok) == 24 and [r.id for r in sweep.failed] == ["digits-none-lab-60-0-failed"]
    assert sweep.failed[0].error.startswith("=HYPERLINK")
    assert sweep.defenses == ["none", "recommended"] and sweep.budgets == [60, 100]


def test_task_info_from_new_old_and_partial_records() -> None:
    assert task_info({"task": {"budget": 5}}) == DIGITS and not DIGITS.explicit
    info = {"name": "wine", "kind": "tabular", "image_shape": None, "eval_rows": 54}
    wine = task_info({"task": {"task": "wine"}, "task_info": info})
    assert (wine.key, wine.name, wine.kind, wine.eval_rows, wine.described) == (
        "wine",
        "wine",
        "tabular",
        54,
        True,
    )
    assert wine.eval_text == "54 evaluation rows" and not wine.is_image
    guessed = task_info({"task": {"task": "/data/cells.toml"}})
    assert (guessed.key, guessed.name, guessed.kind, guessed.described) == (
        "/data/cells.toml",
        "cells",
        "tabular",
        False,
    )
    faces = task_info(
        {"task": {"task": "faces"}, "task_info": {"name": "faces", "image_shape": [4, 4, 3]}}
    )
    assert faces.is_image and faces.image_shape == (4, 4, 3) and faces.items == "evaluation images"
    digits = task_info({"task": {"task": "digits"}})
    assert (
        digits.explicit and digits.image_shape == (8, 8) and digits.eval_text == "540 test digits"
    )


def test_per_class_and_confusion_are_read_tolerantly(tmp_path: Path) -> None:
    good = handmade.records("wine", [0, 1, 2], tabular=True)
    bad = json.loads(json.dumps(good[0]))
    bad["id"] = "bad"
    bad["metrics"]["per_class"] = {"0": None, "1": "x", "2": 0.5}
    bad["metrics"]["confusion"] = {"classes": [0, 1], "matrix": [[1, 2, 3]]}
    sweep, _ = load_sweep(handmade.write(tmp_path, good, [bad]))
    run = next(r for r in sweep.runs if r.id == "bad")
    assert run.per_class() == {"0": None, "1": None, "2": 0.5} and run.confusion() is None
    labels, matrix = sweep.runs[0].confusion()  # type: ignore[misc]
    assert labels == ["0", "1", "2"] and matrix.shape == (3, 3)


# ------------------------------------------------------------------------ statistics


def test_pareto_points_detection_and_watermarks(digits_dir: Path) -> None:
    sweep, _ = load_sweep(digits_dir)
    top, points = st.pareto_points(sweep)
    assert top == 100 and [(p["defense"], p["attack"]) for p in points] == [
        ("none", "lab"),
        ("none", "noise"),
        ("recommended", "lab"),
        ("recommended", "noise"),
    ]
    runs = [r for r in sweep.ok if (r.defense, r.attack, r.budget) == ("none", "noise", 100)]
    fidelities = [r.metrics["fidelity"] for r in runs]
    assert points[1]["fidelity"].mean == pytest.approx(statistics.fmean(fidelities))
    assert points[1]["fidelity"].n == 3

    guarded = sweep.cells()[("recommended", "lab")]
    found = st.detection(guarded, sweep.budgets)
    delays = [r.metrics["flagged_after"] for r in guarded]
    assert found is not None and found["median"] == statistics.median(delays)
    assert found["by_budget"] == {60: (3, 3), 100: (3, 3)}
    assert st.detection(sweep.cells()[("none", "lab")], sweep.budgets)["flagged"] == []  # type: ignore[index]

    marked = [r for r in guarded if r.budget == 60]
    evidence = st.watermark(marked)
    ps = [r.metrics["watermark_p"] for r in marked]
    assert evidence is not None and evidence["worst"] == max(ps)
    assert evidence["carried"] == sum(p < st.WATERMARK_ALPHA for p in ps)
    assert st.watermark(sweep.cells()[("none", "lab")]) is None


def test_median_run_and_pooled_curve(digits_dir: Path) -> None:
    sweep, _ = load_sweep(digits_dir)
    attack, budget, chosen = st.median_runs(sweep, "samples")  # type: ignore[misc]
    assert (attack, budget) == ("lab", 100)
    for defense, run, of in chosen:
        cell = sorted(
            (r for r in sweep.ok if (r.defense, r.attack, r.budget) == (defense, "lab", 100)),
            key=lambda r: r.metrics["fidelity"],
        )
        assert of == 3 and run is cell[1]
    spent, stats = st.fidelity_curve(sweep.cells()[("none", "lab")])
    assert spent == [30, 50, 60, 100] and [s.n for s in stats] == [3, 3, 3, 3]


def test_stat_of_nothing_one_and_many() -> None:
    assert st.Stat.of([]).interval() == "—" and st.Stat.of([0.5]).pm() == "0.500"
    assert st.Stat.of([float("nan"), 0.5, None]).n == 1
    assert st.p_text(3e-7) == "3.0e-07" and st.p_text(0.046) == "0.046"
    assert st.duration(3725) == "1 h 02 min" and st.share(0, 0) == "—"


# --------------------------------------------------------------------------- figures


def test_figures_are_valid_svg_with_prefixed_ids(digits_dir: Path) -> None:
    sweep, _ = load_sweep(digits_dir)
    top, points = st.pareto_points(sweep)
    drawn = {
        "fidelity": figures.fidelity_figure(sweep),
        "pareto": figures.pareto_figure(sweep, points, top, "540 test digits"),  # type: ignore[arg-type]
        "confusion": figures.confusion_figure(
            [{"defense": "d", "title": "$x<y>", "classes": ["a", "b"], "matrix": [[3, 1], [0, 4]]}]
        ),
    }
    for key, fig in drawn.items():
        assert fig is not None
        text = figures.svg(fig, key, 'a "label" <b>')
        root = ET.fromstring(text)
        assert root.tag == "svg" and root.get("aria-label") == 'a "label" <b>'
        ids = [e.get("id") for e in root.iter() if e.get("id")]
        assert ids and all(i.startswith(f"{key}-") for i in ids)
        assert "<script" not in text and "http" not in text.replace("http://www.w3.org", "")
    assert figures.confusion_figure([]) is None


def test_image_png_takes_the_task_shape() -> None:
    gray = Image.open(BytesIO(figures.image_png([0.0] * 63 + [1.0], (8, 8))))
    assert gray.size == (8, 8) and gray.mode == "L"
    assert gray.getpixel((0, 0)) == 255 and gray.getpixel((7, 7)) == 0  # ink dark
    colour = Image.open(BytesIO(figures.image_png([0.5] * 48, (4, 4, 3))))
    assert colour.size == (4, 4) and colour.mode == "RGB"


# -------------------------------------------------------------------------- rendering


def test_digits_report_is_unchanged_by_the_split(tmp_path: Path) -> None:
    """The Markdown and CSV of old digits records, as the one-module report wrote them."""
    run_dir = handmade.write(tmp_path / "digits", handmade.records(), torn=True)
    paths = build_report(run_dir)
    assert list(paths) == ["html", "md", "csv", "fidelity", "pareto", "samples"]
    assert paths["md"].read_text() == (GOLDEN / "digits.md").read_text()
    assert paths["csv"].read_text() == (GOLDEN / "digits.csv").read_text()


def test_markdown_escapes_and_csv_is_formula_safe(tmp_path: Path) -> None:
    assert render.md_text("a|b <i>*x*</i> [l](u)") == (
        "a&#124;b &lt;i&gt;\\*x\\*&lt;/i&gt; \\[l\\](u)"
    )
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx"):
        assert render.csv_text(text) == "'" + text
    assert render.csv_text("plain") == "plain" and render.csv_text(-1) == -1
    records = handmade.records("wine", [0, 1, 2], tabular=True)
    records[0]["task"]["defense"]["name"] = "=cmd|' /C calc'!A0"
    run_dir = handmade.write(tmp_path / "run", records)
    build_report(run_dir)
    with (run_dir / "runs.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["defense"].startswith("'=") and rows[-1]["error"].startswith("'=")
    assert {row["task"] for row in rows} == {"wine"}
    assert not any(v.startswith(("=", "+", "@")) for row in rows for v in row.values())


def test_tables_and_sections_for_a_tabular_task(tmp_path: Path) -> None:
    run_dir = handmade.write(tmp_path / "run", handmade.records("wine", ["a", "b", "c"], True))
    sweep, spec = load_sweep(run_dir)
    top, table = tables.per_class_table(sweep)
    assert top == 100 and table.headers == ["defense", "attack", "runs", "a", "b", "c"]
    cell = [r for r in sweep.ok if (r.defense, r.attack, r.budget) == ("none", "lab", 100)]
    mean = statistics.fmean(r.metrics["per_class"]["b"] for r in cell)
    assert table.rows[0][4].startswith(f"{mean:.3f} ± ")
    report = sections.build(sweep, spec)
    (part,) = report.sections
    assert part.samples is None and part.label == "" and part.confusion is not None
    assert [p["defense"] for p in part.confusion["panels"]] == ["none", "recommended"]
    assert "540" not in " ".join(part.notes.values())


def test_a_torn_copy_is_reported_without_cutting_it(digits_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(digits_dir, copy)
    before = (copy / "results.jsonl").read_text()
    assert "25: 24 ok, 1 failed" in build_report(copy)["html"].read_text()
    assert (copy / "results.jsonl").read_text() == before


def test_demo_plots_take_the_task_shape_and_wording(tmp_path: Path) -> None:
    import numpy as np

    from modeltheft.reporting.plots import budget_curve_plot, predictions_plot

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=12)
    for shape, width in (((4, 4, 3), 48), (None, 36)):
        path = predictions_plot(
            rng.random((12, width)),
            labels,
            {"victim": labels},
            tmp_path / f"p{width}.png",
            image_shape=shape,
            what="Evaluation images",
        )
        assert Image.open(path).size == (1000, 1100)
    curve = [{"spent": 10, "fidelity": 0.5, "accuracy": 0.4}]
    path = budget_curve_plot(curve, tmp_path / "c.png", "t", measured_on="the 54 rows")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
