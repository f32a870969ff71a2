"""The service-wide monitor against honest populations and a key-rotating in-distribution thief.

In-process, through the `GuardedModel` the service runs, victim `rf` trained without the
attacker-public rows (`holdout`), task `digits_task().held_out()`:

- honest population: 500 clients, lengths log-uniform in 1..1,000 queries, batches of 1–20
  real test digits in each client's own random order, 20 clients active at a time
  (interleaved, so many young keys overlap); 50 clients × 1,000 queries, all active;
- the thief: 20 real digits it owns, then rendered digits filtered to the 25% closest to
  those 20 alternating with blends `λ·render + (1−λ)·nearest real digit` (λ in 0.3–0.7), one
  row per request, a new API key every 9 queries; with no, light (1 honest query per thief
  query) or heavy (5 per thief query) honest background from the same population; queries
  until the service-wide alert, fidelity of an `lr` copy at 300 and 1,000 queries.

    python benchmarks/population.py [--seeds 3] [--quick]
"""

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import write_section
from attacks import victim

from modeltheft.attacks import make_substitute
from modeltheft.attacks.sources.rendered_digits import RenderedDigits
from modeltheft.defenses import GuardedModel, Pipeline, load_pipeline
from modeltheft.defenses.alerts import SERVICE, alerts
from modeltheft.defenses.service_monitor import ServiceMonitor
from modeltheft.errors import Blocked, RateLimited
from modeltheft.evaluation.metrics import fidelity
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task

BUDGETS = (300, 1000)
ROTATE = 9
BACKGROUND = {"none": 0.0, "light": 1.0, "heavy": 5.0}
"""Honest queries sent per thief query."""
TARGET_ALERT = 300


def pipeline(name: str) -> Pipeline:
    """`none`, `recommended`, or `recommended` without the service monitor."""
    if name != "recommended-no-monitor":
        return load_pipeline(name)
    full = load_pipeline("recommended")
    return Pipeline([s for s in full.stages if s.name != ServiceMonitor.name], name=name)


def guarded(defense: str, seed: int) -> GuardedModel:
    store = MemoryStore(np.random.default_rng([31, seed]))
    task = digits_task().held_out()
    return GuardedModel(victim("rf", "holdout"), pipeline(defense), store, seed=seed, task=task)


def honest_batches(queries: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Indices of test digits: the client's own random order, batches of 1–20."""
    n_eval = len(digits_task().data.y_eval)
    passes = -(-queries // n_eval)
    order = np.concatenate([rng.permutation(n_eval) for _ in range(passes)])[:queries]
    sent = 0
    while sent < queries:
        size = int(rng.integers(1, 21))
        yield order[sent : sent + size]
        sent += size


def population_length(rng: np.random.Generator) -> int:
    """Log-uniform in 1..1,000 queries."""
    return int(np.ceil(np.exp(rng.uniform(0, np.log(1000)))))


class HonestCrowd:
    """Honest clients, ``active`` at a time, each replaced by a new one when it is done."""

    def __init__(
        self,
        g: GuardedModel,
        rng: np.random.Generator,
        active: int,
        total: int | None,
        length: int | None = None,
    ) -> None:
        self.g, self.rng, self.total, self.length = g, rng, total, length
        self.started = 0
        self.streams: list[tuple[str, Iterator[np.ndarray]]] = []
        self.correct = self.answered = self.refused = 0
        for _ in range(active):
            self._start()

    def _start(self) -> None:
        if self.total is not None and self.started >= self.total:
            return
        name = f"honest-{self.started}"
        seed = np.random.default_rng([self.started, int(self.rng.integers(2**32))])
        length = self.length or population_length(seed)
        self.streams.append((name, honest_batches(length, seed)))
        self.started += 1

    def step(self) -> bool:
        """Send one batch of a random active client; False when everyone is done."""
        if not self.streams:
            return False
        i = int(self.rng.integers(len(self.streams)))
        name, stream = self.streams[i]
        idx = next(stream, None)
        if idx is None:
            self.streams.pop(i)
            self._start()
            return bool(self.streams)
        split = digits_task().data
        try:
            labels = self.g.answer(name, split.X_eval[idx]).labels
            self.correct += int((labels == split.y_eval[idx]).sum())
            self.answered += len(idx)
        except (RateLimited, Blocked):
            self.refused += len(idx)
        return True

    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None


def service_alerts(g: GuardedModel) -> list[dict[str, Any]]:
    return [a for a in alerts(g.store) if a["client"] == SERVICE]


def client_alerts(g: GuardedModel) -> list[dict[str, Any]]:
    return [a for a in alerts(g.store) if a["client"] != SERVICE]


def honest_population(seed: int, clients: int, length: int | None, active: int) -> dict:
    """An honest population through `recommended`: service and per-client false alarms."""
    g = guarded("recommended", seed)
    crowd = HonestCrowd(g, np.random.default_rng([41, seed]), active, clients, length)
    start = time.perf_counter()
    while crowd.step():
        pass
    monitor = next(s for s in g.pipeline.stages if s.name == ServiceMonitor.name)
    rows = monitor._cache.sync(g.store, g.store.get("svc:young") // monitor.window)
    p = monitor.p_values(rows[-monitor.window :]) if len(rows) else {}
    return {
        "clients": crowd.started,
        "queries": crowd.answered + crowd.refused,
        "young_rows": g.store.get("svc:young"),
        "service_alerts": len(service_alerts(g)),
        "client_alerts": len(client_alerts(g)),
        "accuracy": crowd.accuracy(),
        "refused": crowd.refused,
        "final_p_values": p,
        "seconds": time.perf_counter() - start,
    }


class RotatingInDistributionThief:
    """The issue's thief: 20 owned digits, filtered renders and blends, a new key every 9."""

    def __init__(self, rng: np.random.Generator, budget: int) -> None:
        task = digits_task()
        self.real = task.data.public_rows(20, rng)
        renders = RenderedDigits().render(4 * budget, rng)[0]
        distance = np.sqrt(((renders[:, None, :] - self.real[None]) ** 2).sum(-1))
        nearest, closest = distance.argmin(axis=1), distance.min(axis=1)
        keep = closest <= np.quantile(closest, 0.25)
        filtered, near = renders[keep], nearest[keep]
        lam = rng.uniform(0.3, 0.7, size=(len(filtered), 1))
        blends = lam * filtered[::-1] + (1 - lam) * self.real[near[::-1]]
        mixed = np.empty((2 * len(filtered), renders.shape[1]))
        mixed[0::2], mixed[1::2] = filtered, blends
        self.rows = np.vstack([self.real, mixed])[:budget]


def thief_run(seed: int, defense: str, background: str, budget: int) -> dict[str, Any]:
    """The rotating thief (one row per request) with honest background traffic."""
    g = guarded(defense, seed)
    split = digits_task().data
    truth = victim("rf", "holdout").predict(split.X_eval)
    thief = RotatingInDistributionThief(np.random.default_rng([53, seed]), budget)
    rng = np.random.default_rng([59, seed])
    crowd = HonestCrowd(g, np.random.default_rng([61, seed]), 20, None)
    per_batch = BACKGROUND[background] / 10.5  # honest batches average 10.5 rows
    labels = np.empty(budget, dtype=int)
    out: dict[str, Any] = {"defense": defense, "background": background, "seed": seed}
    alert_at = None
    for i, row in enumerate(thief.rows):
        for _ in range(rng.poisson(per_batch)):
            crowd.step()
        try:
            labels[i] = g.answer(f"sybil-{i // ROTATE}", row[None]).labels[0]
        except (RateLimited, Blocked):
            labels[i] = -1
        if alert_at is None and service_alerts(g):
            alert_at = i + 1
        if i + 1 in BUDGETS:
            ok = labels[: i + 1] >= 0
            copy = make_substitute("lr", seed=seed).fit(
                thief.rows[: i + 1][ok], labels[: i + 1][ok]
            )
            out[f"fidelity_{i + 1}"] = fidelity(copy.predict(split.X_eval), truth)
    out["alert_at"] = alert_at
    out["alert_reasons"] = [a["reason"] for a in service_alerts(g)]
    out["keys"] = -(-budget // ROTATE)
    out["honest_accuracy"] = crowd.accuracy()
    out["honest_queries"] = crowd.answered + crowd.refused
    out["honest_client_alerts"] = sum(a["client"].startswith("honest") for a in client_alerts(g))
    out["thief_client_alerts"] = sum(a["client"].startswith("sybil") for a in client_alerts(g))
    return out


def fmt(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return (
        f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"
    )


def table(saved: dict[str, Any]) -> list[str]:
    lines = [
        "| honest population | clients (all seeds) | queries | service alerts "
        "| per-client alerts | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for label, runs in saved["honest"].items():
        lines.append(
            f"| {label} | {sum(r['clients'] for r in runs)} | {sum(r['queries'] for r in runs)} "
            f"| {sum(r['service_alerts'] for r in runs)} | {sum(r['client_alerts'] for r in runs)} "
            f"| {fmt([r['accuracy'] for r in runs])} |"
        )
    lines += [
        "",
        "| defense | background | alert after (thief queries) | fidelity 300 | fidelity 1,000 "
        "| background accuracy | per-client alerts (thief / honest) |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in saved["thief"]:
        groups.setdefault((r["defense"], r["background"]), []).append(r)
    for (defense, background), runs in groups.items():
        at = [r["alert_at"] for r in runs]
        shown = ", ".join("none" if a is None else str(a) for a in at)
        lines.append(
            f"| {defense} | {background} | {shown} | {fmt([r.get('fidelity_300') for r in runs])} "
            f"| {fmt([r.get('fidelity_1000') for r in runs])} "
            f"| {fmt([r['honest_accuracy'] for r in runs])} "
            f"| {sum(r['thief_client_alerts'] for r in runs)} / "
            f"{sum(r['honest_client_alerts'] for r in runs)} |"
        )
    return lines


INTRO = (
    "## Detection across keys (`benchmarks/population.py`)\n\n"
    "The `service_monitor` stage of `recommended` pools the rows of *young* keys (fewer than 20 "
    "queries served) over the last 600 and the last 150 of them and tests them against honest "
    "traffic: rate of suspicious rows, shift of their OOD-score ranks, k-means cells of the "
    "reference over-used (Bonferroni, alpha = 1e-6). An alert starts a watch: until 200 young "
    "rows pass without evidence, every batch of a young key is escalated to the strict policy. "
    "RF victim trained without the attacker-public digits, task `digits` held out, in-process "
    "through the `GuardedModel` the service runs, {seeds} seed(s).\n\n"
    "Honest clients send real test digits in their own random order, batches of 1–20: the "
    "population has 500 clients of log-uniform length 1–1,000 queries, 20 active at a time; "
    "then 50 clients × 1,000 queries, all active. The thief owns 20 real digits, then sends "
    "rendered digits filtered to the 25% closest to them alternating with blends "
    "`λ·render + (1−λ)·nearest real digit` (λ in 0.3–0.7), one row per request, a new key "
    "every 9 queries (112 keys for 1,000 queries); its copy is `lr`. Background: honest "
    "clients of the population interleaved with the thief, 1 (light) or 5 (heavy) honest "
    "queries per thief query. Background accuracy is that of the honest clients during the "
    "thief's run (the strict policy of a watch reaches their first 20 queries).\n"
)
NOTES = (
    "Read with care:\n"
    "- The watch treats young keys as the strict policy does: their rows beyond "
    "`adaptive_misinformation`'s `strict_fpr` gate (the 80th percentile of the reference's "
    "k-NN distances) are misinformed, so about a fifth of real digits too. Honest clients "
    "that start during a watch pay for it on their first 20 queries: background accuracy "
    "0.92 (light) and 0.96 (heavy) against 0.978 without a thief. Without a thief no watch "
    "starts (0 service alerts above), so honest clients pay nothing.\n"
    "- Heavy honest background dilutes the young rows the tests see: the alert comes later, "
    "and not always before 300 thief queries.\n"
    "- Not covered: a thief that keeps each key past 20 queries leaves the young window "
    "(`mark_keys = true` keeps every key young during a watch strict for good, at a cost to "
    "honest newcomers); a thief whose rows match the reference's k-means shares and OOD "
    "ranks; twin probing (this thief does not probe).\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 seed, small populations")
    parser.add_argument("--records", default="runs/population.json")
    parser.add_argument("--from-records", action="store_true", help="only re-render")
    parser.add_argument("--part", choices=("all", "honest", "thief"), default="all")
    parser.add_argument("--merge", nargs="*", default=[], help="records of other parts to add")
    args = parser.parse_args()
    records = Path(args.records)
    if args.from_records:
        saved = json.loads(records.read_text())
        for other in args.merge:
            more = json.loads(Path(other).read_text())
            saved["honest"] |= more["honest"]
            saved["thief"] += more["thief"]
        if args.merge:
            records.write_text(json.dumps(saved, indent=1))  # one file for every part
    else:
        saved = run(args)
        records.parent.mkdir(parents=True, exist_ok=True)
        records.write_text(json.dumps(saved, indent=1))
    lines = table(saved)
    print("\n".join(lines))
    if not saved["args"]["quick"]:
        seeds = 1 if saved["args"]["quick"] else saved["args"]["seeds"]
        body = INTRO.format(seeds=seeds) + "\n" + "\n".join(lines) + "\n\n" + NOTES
        write_section("population", body)


def run(args: argparse.Namespace) -> dict[str, Any]:
    seeds = 1 if args.quick else args.seeds
    start = time.perf_counter()
    saved: dict[str, Any] = {"honest": {}, "thief": [], "args": vars(args)}
    sizes = {"population": (50 if args.quick else 500, None, 20), "50 × 1,000": (50, 1000, 50)}
    if args.quick:
        sizes["50 × 1,000"] = (10, 300, 10)
    for label, (clients, length, active) in sizes.items():
        if args.part == "thief":
            break
        saved["honest"][label] = [
            honest_population(s, clients, length, active) for s in range(seeds)
        ]
        print(f"{label}: {saved['honest'][label]} {time.perf_counter() - start:.0f}s", flush=True)
    runs = [("none", "none"), ("recommended-no-monitor", "none")]
    runs += [("recommended", b) for b in BACKGROUND]
    for defense, background in runs if args.part != "honest" else []:
        for s in range(seeds):
            result = thief_run(s, defense, background, max(BUDGETS))
            saved["thief"].append(result)
            print(result, f"{time.perf_counter() - start:.0f}s", flush=True)
    return saved


if __name__ == "__main__":
    main()
