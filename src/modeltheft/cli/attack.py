"""``modeltheft attack``: steal a model through a prediction API, with a resumable query log."""

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sklearn.base import ClassifierMixin

from modeltheft.attacks.spec import AttackSpec, default_checkpoints
from modeltheft.data import lab_split
from modeltheft.errors import ConfigError, ModelIntegrityError
from modeltheft.evaluation.metrics import accuracy, fidelity, per_class_agreement
from modeltheft.evaluation.results import environment, write_csv, write_json
from modeltheft.oracle import QueryLog, make_oracle
from modeltheft.reporting.plots import budget_curve_plot
from modeltheft.victim import load_victim, save_victim
from modeltheft.victim.onnx import export_onnx


def _portable(model: ClassifierMixin) -> ClassifierMixin:
    """A plain scikit-learn equivalent where the attack built its own estimator."""
    return model.to_sklearn() if hasattr(model, "to_sklearn") else model


def run_attack(
    spec: AttackSpec,
    *,
    target: str,
    out: Path,
    api_key: str | None,
    on_rate_limit: str,
    victim_path: Path | None,
    console: Console,
    protocol: str = "modeltheft",
    model_name: str | None = None,
) -> dict[str, Any]:
    """Query ``target``, fit the substitute, save it and the records; returns results.json."""
    spec.validate()
    victim = load_victim(victim_path).model if victim_path is not None else None
    split = lab_split()
    truth = victim.predict(split.X_test) if victim is not None else None

    def evaluate(model: ClassifierMixin) -> dict[str, float]:
        predicted = model.predict(split.X_test)
        metrics = {"accuracy": accuracy(predicted, split.y_test)}
        if truth is not None:
            metrics["fidelity"] = fidelity(predicted, truth)
        return metrics

    log = QueryLog(out / "queries.jsonl")
    if log.loaded:
        console.print(f"resuming: {log.loaded} answers already paid for in {log.path}")
    oracle = make_oracle(
        protocol,
        target,
        budget=spec.budget,
        model_name=model_name,
        api_key=api_key,
        log=log,
        on_rate_limit=on_rate_limit,
    )
    columns = (TextColumn("querying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("attack", total=spec.budget)
            result = spec.run(
                oracle, evaluate, progress=lambda spent, _: bar.update(task, completed=spent)
            )
    finally:
        oracle.close()

    model = _portable(result.model)
    final = evaluate(model)
    predicted = model.predict(split.X_test)
    per_class = (
        per_class_agreement(predicted, truth, model.classes_)
        if truth is not None
        else per_class_agreement(predicted, split.y_test, model.classes_)
    )
    names = ["accuracy"] + (["fidelity"] if truth is not None else [])
    curve = [
        {"spent": p.spent, "answered": p.answered, **{k: (p.metrics or {}).get(k) for k in names}}
        for p in result.curve
    ]
    out.mkdir(parents=True, exist_ok=True)
    outputs = {"query_log": str(log.path)}
    try:
        save_victim(model, out / "stolen.skops", {"family": spec.substitute, "stolen_from": target})
        outputs["model"] = str(out / "stolen.skops")
    except ModelIntegrityError as exc:
        console.print(f"no skops copy: {exc}")
    try:
        outputs["onnx"] = str(export_onnx(model, out / "stolen.onnx"))
    except ModelIntegrityError as exc:
        console.print(f"no ONNX copy: {exc}")
    if curve:
        outputs["budget_curve_csv"] = str(write_csv(out / "budget_curve.csv", curve))
        title = f"{spec.strategy}, {spec.label_mode} labels, {spec.substitute} substitute"
        outputs["budget_curve_png"] = str(budget_curve_plot(curve, out / "budget_curve.png", title))
    record = {
        "spec": {
            **spec.record(),
            "target": target,
            "protocol": protocol,
            "model_name": model_name,
            "on_rate_limit": on_rate_limit,
        },
        "seed": spec.seed,
        "metrics": {
            "sent": result.sent,
            "answered": result.answered,
            "refused": oracle.refused,
            "reused_from_log": oracle.reused,
            "query_success_rate": result.query_success_rate,
            "stolen_accuracy": final["accuracy"],
            "fidelity": final.get("fidelity"),
        },
        "per_class": {
            "against": "victim" if truth is not None else "true labels",
            "agreement": {str(k): v for k, v in per_class.items()},
        },
        "budget_curve": curve,
        "outputs": outputs,
        "environment": environment(),
    }
    write_json(out / "results.json", record)
    metrics = record["metrics"]
    console.print(
        f"{result.answered}/{result.sent} queries answered "
        f"({oracle.reused} reused from the log); stolen accuracy on the 540 lab test digits: "
        f"{metrics['stolen_accuracy']:.3f}"
        + (f"; fidelity {metrics['fidelity']:.3f}" if metrics["fidelity"] is not None else "")
    )
    console.print("saved " + ", ".join([*outputs.values(), str(out / "results.json")]))
    return record


def parse_checkpoints(text: str | None, budget: int) -> tuple[int, ...]:
    """``"100,300"`` → (100, 300); None → about ten steps up to the budget."""
    if text is None:
        return default_checkpoints(budget)
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"--checkpoints takes comma-separated integers, got {text!r}") from None
    return values
