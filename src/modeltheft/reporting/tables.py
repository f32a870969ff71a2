"""The report's tables as rows of text cells, shared by the HTML template and the Markdown."""

from dataclasses import dataclass, field
from typing import Any

from modeltheft.reporting import statistics as st
from modeltheft.reporting.records import Sweep
from modeltheft.reporting.statistics import Stat


@dataclass
class Table:
    """Headers and rows of text cells, rendered by both the HTML template and Markdown."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    numeric: set[int] = field(default_factory=set)
    """Indexes of right-aligned columns."""

    def __bool__(self) -> bool:
        return bool(self.rows)


def overview(sweep: Sweep) -> list[tuple[str, str]]:
    """Key facts of the run folder: runs, victims, defenses, attacks, budgets, time."""
    seconds = [r.seconds for r in sweep.runs if r.seconds is not None]
    versions = sorted({r.version for r in sweep.runs})
    victims = list(dict.fromkeys(r.victim for r in sweep.runs if r.victim))
    seeds = len({r.seed_index for r in sweep.runs})
    rows = [
        ("sweep", sweep.name),
        ("run folder", sweep.run_dir.name or str(sweep.run_dir)),
        ("runs", f"{len(sweep.runs)}: {len(sweep.ok)} ok, {len(sweep.failed)} failed"),
    ]
    if any(t.explicit for t in sweep.tasks):  # records that name their task
        kinds = [f"{t.name} ({t.kind})" for t in sweep.tasks]
        rows.append(("task" + ("s" if len(kinds) > 1 else ""), ", ".join(kinds)))
    rows += [
        ("victims", ", ".join(victims) or "—"),
        ("defenses", f"{len(sweep.defenses)}: " + ", ".join(sweep.defenses)),
        ("attacks", f"{len(sweep.attacks)}: " + ", ".join(sweep.attacks)),
        ("budgets (queries)", ", ".join(str(b) for b in sweep.budgets)),
        ("seeds per cell", str(seeds)),
        ("modeltheft version" + ("s" if len(versions) > 1 else ""), ", ".join(versions)),
        (
            "total run time",
            f"{st.duration(sum(seconds))} (summed over {len(seconds)} run"
            + ("s)" if len(seconds) != 1 else ")")
            if seconds
            else "—",
        ),
    ]
    return rows


def fidelity_table(sweep: Sweep) -> Table:
    """Mean ± std of fidelity, accuracy, answered queries, honest accuracy per cell and budget."""
    table = Table(
        [
            "defense",
            "attack",
            "budget",
            "runs",
            "fidelity",
            "accuracy",
            "answered",
            "honest accuracy",
        ],
        numeric={2, 3, 4, 5, 6, 7},
    )
    for (defense, attack), runs in sweep.cells().items():
        for budget in sweep.budgets:
            cell = [r for r in runs if r.budget == budget]
            if not cell:
                continue
            answered = Stat.of(r.metric("answered") for r in cell)
            table.rows.append(
                [
                    defense,
                    attack,
                    str(budget),
                    str(len(cell)),
                    Stat.of(r.metric("fidelity") for r in cell).pm(),
                    Stat.of(r.metric("accuracy") for r in cell).pm(),
                    "—" if answered.mean is None else f"{answered.mean:.0f}",
                    Stat.of(r.metric("honest_accuracy") for r in cell).pm(),
                ]
            )
    return table


def pareto_table(points: list[dict[str, Any]]) -> Table:
    """The Pareto points with their 95 % intervals."""
    table = Table(
        ["defense", "attack", "runs", "honest accuracy [95 % CI]", "thief fidelity [95 % CI]"],
        numeric={2, 3, 4},
    )
    for p in points:
        table.rows.append(
            [
                p["defense"],
                p["attack"],
                str(p["fidelity"].n),
                p["honest"].interval(),
                p["fidelity"].interval(),
            ]
        )
    return table


def detection_table(sweep: Sweep) -> tuple[Table, bool]:
    """Thieves flagged and queries until flagged per cell; and whether any run recorded it."""
    table = Table(
        [
            "defense",
            "attack",
            "thieves flagged",
            "by budget",
            "median queries until flagged",
            "max",
            "detectors",
        ],
        numeric={2, 4, 5},
    )
    recorded = False
    for (defense, attack), runs in sweep.cells().items():
        found = st.detection(runs, sweep.budgets)
        if found is None:
            table.rows.append([defense, attack, "not recorded", "", "—", "—", "—"])
            continue
        recorded = True
        by_budget = [f"{b}: {k}/{n}" for b, (k, n) in found["by_budget"].items()]
        table.rows.append(
            [
                defense,
                attack,
                st.share(len(found["flagged"]), found["runs"]),
                " · ".join(by_budget) if len(sweep.budgets) > 1 else "",
                "—" if found["median"] is None else f"{found['median']:.0f}",
                "—" if found["max"] is None else f"{found['max']:.0f}",
                ", ".join(found["detectors"]) or "—",
            ]
        )
    if len(sweep.budgets) <= 1:
        table.headers.pop(3)
        for row in table.rows:
            row.pop(3)
        table.numeric = {2, 3, 4}
    return table, recorded


def watermark_table(sweep: Sweep) -> Table:
    """Watermark p-values of the copies and of the independent model per cell and budget."""
    table = Table(
        [
            "defense",
            "attack",
            "budget",
            "runs",
            "marked answers",
            "copies: worst p",
            "median p",
            "p < 1e-6",
            "independent model: min p",
        ],
        numeric={2, 3, 4, 5, 6, 7, 8},
    )
    for (defense, attack), runs in sweep.cells().items():
        for budget in sweep.budgets:
            found = st.watermark([r for r in runs if r.budget == budget])
            if found is None:
                continue
            table.rows.append(
                [
                    defense,
                    attack,
                    str(budget),
                    str(found["runs"]),
                    "—" if found["marks"] is None else f"{found['marks']:.0f}",
                    st.p_text(found["worst"]),
                    st.p_text(found["median"]),
                    st.share(found["carried"], found["runs"]),
                    st.p_text(found["control"]),
                ]
            )
    return table


def per_class_table(sweep: Sweep) -> tuple[int | None, Table]:
    """Mean agreement with the victim per class label, per defense × attack at the top budget."""
    with_classes = [r for r in sweep.ok if r.per_class()]
    top = st.top_budget(with_classes)
    labels = list(dict.fromkeys(label for r in with_classes for label in r.per_class()))
    table = Table(["defense", "attack", "runs", *labels], numeric=set(range(2, 3 + len(labels))))
    if top is None:
        return None, table
    for (defense, attack), runs in sweep.cells(
        [r for r in with_classes if r.budget == top]
    ).items():
        stats = st.per_class(runs)
        cells = [stats[c].pm() if c in stats else "—" for c in labels]
        table.rows.append([defense, attack, str(len(runs)), *cells])
    return top, table


def failed_table(sweep: Sweep) -> Table:
    """Failed runs with their error (and their task when the folder holds several)."""
    table = Table(["run", "defense", "attack", "budget", "seed", "error"], numeric={3, 4})
    for r in sweep.failed:
        table.rows.append(
            [r.id, r.defense, r.attack, str(r.budget), str(r.seed_index), r.error or r.status]
        )
    if len(sweep.tasks) > 1:
        table.headers.insert(1, "task")
        table.numeric = {4, 5}
        for row, run in zip(table.rows, sweep.failed, strict=True):
            row.insert(1, run.problem.name)
    return table
