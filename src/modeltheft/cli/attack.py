"""``modeltheft attack``: steal a model through a prediction API, with a resumable query log."""

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sklearn.base import ClassifierMixin

from modeltheft.attacks.spec import AttackSpec, default_checkpoints
from modeltheft.errors import ConfigError, ModelIntegrityError
from modeltheft.evaluation.results import environment, write_csv, write_json
from modeltheft.experiments.results import task_info
from modeltheft.measure import CopyEvaluator, EvalRows
from modeltheft.oracle import QueryLog, make_oracle
from modeltheft.oracle.log import log_target
from modeltheft.reporting.plots import budget_curve_plot
from modeltheft.tasks import BUILTIN, Task, get_task
from modeltheft.victim import save_victim
from modeltheft.victim.onnx import export_onnx


def _portable(model: ClassifierMixin) -> ClassifierMixin:
    """A plain scikit-learn equivalent where the attack built its own estimator."""
    return model.to_sklearn() if hasattr(model, "to_sklearn") else model


def owner_copy(path: Path, task: Task | None) -> Any:
    """The owner's own copy of the victim (any classifier: skops or ONNX), to measure with."""
    from modeltheft.victim import load_model

    return load_model(path, task=task).model


def measurement_rows(
    target: Task, given: Task | None, eval_data: Path | None, label_column: str
) -> EvalRows | None:
    """Where the copy is measured: ``--eval-data``, else the task's own evaluation rows.

    The task's own rows are those of ``--task`` when it has data, else those of the built-in
    task the API names (same name, width and classes): the lab's digits API is measured on the
    lab's test digits. Otherwise None: nothing to measure on.
    """
    if eval_data is not None:
        return EvalRows.from_file(eval_data, target, label_column)
    if given is not None and given.data is not None:
        return EvalRows.of_task(given)
    if target.data is not None:
        return EvalRows.of_task(target)
    if target.name in BUILTIN:
        builtin = get_task(target.name)
        if builtin.n_features == target.n_features and sorted(map(str, builtin.classes)) == sorted(
            map(str, target.classes)
        ):
            return EvalRows.of_task(builtin)
    return None


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
    task: str | None = None,
    eval_data: Path | None = None,
    label_column: str = "label",
    outputs: list[str] | None = None,
    datatype: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Query ``target``, fit the substitute, save it and the records; returns results.json.

    Fidelity (with ``victim_path``) and accuracy (with labelled rows) are measured on the
    rows :func:`measurement_rows` picks, never on digits unless the task is digits.
    The query log in ``out`` is tied to the target (protocol, URL, model name): another
    target's log is refused unless ``force``. ``outputs`` and ``datatype`` are OIP v2's.
    """
    spec.validate()
    given = get_task(task) if task is not None else None
    victim = owner_copy(victim_path, given) if victim_path is not None else None
    log = QueryLog(
        out / "queries.jsonl", target=log_target(protocol, target, model_name), force=force
    )
    if log.loaded:
        console.print(f"resuming: {log.loaded} answers already paid for in {log.path}")
    options: dict[str, Any] = {"task": given} if given is not None else {}
    if outputs:
        options["outputs"] = list(outputs)
    if datatype is not None:
        options["datatype"] = datatype
    oracle = make_oracle(
        protocol,
        target,
        budget=spec.budget,
        model_name=model_name,
        api_key=api_key,
        log=log,
        on_rate_limit=on_rate_limit,
        probabilities=spec.needs_probabilities,
        **options,
    )
    columns = (TextColumn("querying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        target_task = oracle.discover()
        rows = measurement_rows(target_task, given, eval_data, label_column)
        evaluate = CopyEvaluator(rows, victim) if rows is not None else None
        if evaluate is not None and rows is not None and rows.y is None and victim is None:
            console.print(f"{rows.source} has no labels and no --victim was given: no metrics")
            evaluate = None
        with Progress(*columns, console=console, transient=True) as bar:
            progress = bar.add_task("attack", total=spec.budget)
            result = spec.run(
                oracle, evaluate, progress=lambda spent, _: bar.update(progress, completed=spent)
            )
    finally:
        oracle.close()

    model = _portable(result.model)
    final = evaluate(model) if evaluate is not None else {}
    names = [k for k in ("accuracy", "fidelity") if k in final]
    curve = [
        {"spent": p.spent, "answered": p.answered, **{k: (p.metrics or {}).get(k) for k in names}}
        for p in result.curve
    ]
    found = evaluate.agreement(model, target_task.classes) if evaluate is not None else None
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
        # reporting.plots (issue #11) names the rows; the digits call stays as it was
        wording = {}
        if rows is not None and not target_task.is_image:
            wording["measured_on"] = f"{len(rows)} rows of {rows.source}"
        outputs["budget_curve_png"] = str(
            budget_curve_plot(curve, out / "budget_curve.png", title, **wording)
        )
    record: dict[str, Any] = {
        "spec": {
            **spec.record(),
            "target": target,
            "protocol": protocol,
            "model_name": model_name,
            "outputs": outputs,
            "datatype": datatype,
            "on_rate_limit": on_rate_limit,
            "task": task,
            "eval_data": None if eval_data is None else str(eval_data),
        },
        "seed": spec.seed,
        "task": task_info(target_task, None if rows is None else len(rows)),
        "evaluation": None if rows is None else rows.describe(),
        "metrics": {
            "sent": result.sent,
            "answered": result.answered,
            "refused": oracle.refused,
            "reused_from_log": oracle.reused,
            "query_success_rate": result.query_success_rate,
            "stolen_accuracy": final.get("accuracy"),
            "fidelity": final.get("fidelity"),
        },
        "per_class": None
        if found is None
        else {"against": found["against"], "agreement": found["per_class"]},
        "budget_curve": curve,
        "outputs": outputs,
        "environment": environment(),
    }
    if found is not None and not target_task.is_image:
        record["confusion"] = found["confusion"]
    write_json(out / "results.json", record)
    console.print(_summary(record, target_task, rows), markup=False, highlight=False)
    console.print("saved " + ", ".join([*outputs.values(), str(out / "results.json")]))
    return record


def _summary(record: dict[str, Any], task: Task, rows: EvalRows | None) -> str:
    """One line: answers, and what the copy scored on which rows of which task."""
    metrics = record["metrics"]
    text = (
        f"{metrics['answered']}/{metrics['sent']} queries answered "
        f"({metrics['reused_from_log']} reused from the log); task {task.name!r}"
    )
    if rows is None:
        return text + ": no evaluation rows (give --eval-data or --task), only the budget curve"
    text += f", measured on {len(rows)} evaluation rows ({rows.source})"
    if metrics["stolen_accuracy"] is not None:
        text += f": stolen accuracy {metrics['stolen_accuracy']:.3f}"
    if metrics["fidelity"] is not None:
        text += f"; fidelity {metrics['fidelity']:.3f}"
    return text


def parse_checkpoints(text: str | None, budget: int) -> tuple[int, ...]:
    """``"100,300"`` → (100, 300); None → about ten steps up to the budget."""
    if text is None:
        return default_checkpoints(budget)
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"--checkpoints takes comma-separated integers, got {text!r}") from None
    return values
