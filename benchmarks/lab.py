"""How the lab's figures are distributed over seeds, and what real HTTP costs against in-process.

The OWASP lab reports one run (np.random.seed(42)). This script runs the lab's attack against
the `none` and `lab` presets over many seeds, in-process (same GuardedModel the service runs),
and compares the spread with the lab's published figures. It also times one lab scenario over
real HTTP against the same scenario in-process, in the same run, and reports the ratio.

    python benchmarks/lab.py [--seeds 50]
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import write_section
from _reference import lab_run

from modeltheft.attacks import extract, make_strategy, make_substitute
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.evaluation.metrics import accuracy, fidelity
from modeltheft.oracle import HttpOracle, LocalOracle
from modeltheft.service import Settings, create_app
from modeltheft.service.auth import KeyRing
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import digits_task
from modeltheft.victim import save_victim, train_victim

TABLE_HEAD = (
    "| scenario | stolen accuracy (mean ± std) | 5th–95th percentile | fidelity | answered "
    "| lab's single run (acc / fid / answered) |\n|---|---|---|---|---|---|"
)
LAB = {"none": (0.494, 0.504, 1.0), "lab": (0.174, 0.172, 0.607)}


def one_run(victim, preset: str, seed_seq: np.random.SeedSequence) -> tuple[float, float, float]:
    split = digits_task().data
    server_seed, attack_seed = seed_seq.spawn(2)
    guarded = GuardedModel(
        victim,
        load_pipeline(preset),
        seed=int(server_seed.generate_state(1)[0]),
        task=digits_task(),
    )
    oracle = LocalOracle(guarded, budget=300)
    result = extract(
        oracle,
        make_strategy("owasp-synthetic"),
        make_substitute("lr"),
        300,
        np.random.default_rng(attack_seed),
    )
    predicted = result.model.predict(split.X_eval)
    return (
        accuracy(predicted, split.y_eval),
        fidelity(predicted, victim.predict(split.X_eval)),
        result.query_success_rate,
    )


def time_transport(victim, path: Path, repeats: int) -> tuple[float, float]:
    """Median seconds of one 300-query lab scenario: in-process, and over loopback HTTP."""
    local, http = [], []
    settings = Settings(keys=KeyRing.from_pairs({"t": "k"}), model_path=path, defense="lab", seed=0)
    with BackgroundServer(create_app(settings)) as server:
        for i in range(repeats):
            rng = np.random.default_rng(i)
            start = time.perf_counter()
            guarded = GuardedModel(victim, load_pipeline("lab"), seed=i, task=digits_task())
            extract(
                LocalOracle(guarded, 300, client_id=f"l{i}"),
                make_strategy("owasp-synthetic"),
                make_substitute("lr"),
                300,
                rng,
            )
            local.append(time.perf_counter() - start)
            start = time.perf_counter()
            oracle = HttpOracle(server.url, "k", budget=300)
            extract(
                oracle,
                make_strategy("owasp-synthetic"),
                make_substitute("lr"),
                300,
                np.random.default_rng(i),
            )
            oracle.close()
            http.append(time.perf_counter() - start)
            server.app.state.guarded.store = type(server.app.state.guarded.store)()
    return float(np.median(local)), float(np.median(http))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--timing-repeats", type=int, default=3)
    args = parser.parse_args()

    trained = train_victim("rf")
    victim = trained.model
    seeds = np.random.SeedSequence(2024).spawn(args.seeds)
    stats = {}
    for preset in ("none", "lab"):
        runs = np.array([one_run(victim, preset, s) for s in seeds])
        stats[preset] = runs
        print(preset, runs.mean(axis=0).round(3), runs.std(axis=0, ddof=1).round(3))

    reference = [lab_run(victim, seed) for seed in range(args.seeds)]
    ref = {p: np.array([r[p] for r in reference], dtype=float) for p in ("none", "lab")}
    at42 = lab_run(victim, 42)
    print("reference", {p: ref[p].mean(axis=0).round(3) for p in ref}, at42)

    lab_acc = stats["lab"][:, 0]
    rng = np.random.default_rng(0)
    means10 = rng.choice(lab_acc, size=(20_000, 10), replace=True).mean(axis=1)
    share = float(np.mean(means10 <= 0.25))

    tmp = Path("runs/bench-lab")
    save_victim(victim, tmp / "victim.skops", trained.metadata)
    local_s, http_s = time_transport(victim, tmp / "victim.skops", args.timing_repeats)

    rows = []
    for preset, label in (("none", "no defense"), ("lab", "lab defenses")):
        runs = stats[preset]
        mean, std = runs.mean(axis=0), runs.std(axis=0, ddof=1)
        lo, hi = np.percentile(runs[:, 0], [5, 95])
        lab_acc_pub, lab_fid_pub, lab_q = LAB[preset]
        rows.append(
            f"| {label} | {mean[0]:.3f} ± {std[0]:.3f} | {lo:.3f}–{hi:.3f} | {mean[1]:.3f} ± "
            f"{std[1]:.3f} | {mean[2]:.1%} | {lab_acc_pub:.3f} / {lab_fid_pub:.3f} / {lab_q:.1%} |"
        )
    body = f"""## The OWASP lab over seeds (`benchmarks/lab.py`)

{args.seeds} seeds of the lab's attack (300 `owasp-synthetic` queries, hard labels,
`LogisticRegression(max_iter=1000)`) against the default victim (RF, test accuracy
{trained.metadata["test_accuracy"]:.3f}), in-process through the same `GuardedModel` the
service runs. Python {platform.python_version()}.

{TABLE_HEAD}
{chr(10).join(rows)}

- Baseline in the same run: the lab's own procedure (`benchmarks/_reference.py`: attacker and
  defenses drawing from one stream, as the lab's global `np.random.seed(42)` does) replayed at
  seed 42 gives {at42["none"][0]:.3f} / {at42["none"][1]:.3f} / {at42["none"][2]} answered
  undefended and {at42["lab"][0]:.3f} / {at42["lab"][1]:.3f} / {at42["lab"][2]} answered defended:
  the lab's published figures, to the digit. Over seeds 0–{args.seeds - 1} the same procedure
  averages {ref["none"][:, 0].mean():.3f} ± {ref["none"][:, 0].std(ddof=1):.3f} undefended and
  {ref["lab"][:, 0].mean():.3f} ± {ref["lab"][:, 0].std(ddof=1):.3f} defended, in line with
  ours above: the lab's 0.174 is a favourable draw, not the typical outcome.
- Issue #2 asks for a 10-repeat demo whose defended mean is at most 0.25. Resampling these
  seeds, a 10-repeat mean is ≤ 0.25 in {share:.0%} of draws, so whether one demo run meets it
  depends on its seed. Our defaults (seed 42) give the figures in the README; we do not pick
  seeds to pass.
- Transport cost, one defended 300-query scenario, median of {args.timing_repeats}: in-process
  {local_s:.2f} s, over loopback HTTP {http_s:.2f} s (ratio {http_s / local_s:.1f}×, one query
  per request as in the lab).
"""
    print(write_section("lab", body))


if __name__ == "__main__":
    main()
