"""Typer app: thin commands that parse options, call the library and render the result."""

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from modeltheft import __version__
from modeltheft.cli import choices as registered
from modeltheft.cli.audit import audit_command
from modeltheft.cli.experiments import sweep_command
from modeltheft.cli.report import report_command
from modeltheft.cli.watermark import watermark_app
from modeltheft.errors import ConfigError, ModelTheftError

app = typer.Typer(
    name="modeltheft",
    help="Model extraction (OWASP ML05:2023): steal a classifier through its API, and defend one.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(
    help="Manage API keys (only salted hashes are stored).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(watermark_app, name="watermark")
app.command("sweep")(sweep_command)
app.command("report")(report_command)
app.command("audit")(audit_command)
console = Console()


def _print_version(value: bool) -> None:
    """``--version``: print the version and stop before any command is looked for."""
    if value:
        console.print(__version__, markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,  # handled while parsing, before click asks for a command
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Model extraction (OWASP ML05:2023): steal a classifier through its API, and defend one."""


@app.command(cls=registered.with_choices({"model": registered.families, "task": registered.tasks}))
def train(
    out: Annotated[
        Path, typer.Option(help="Where to write the model (.skops); metadata goes beside it.")
    ],
    model: Annotated[str, typer.Option(help="Model family.")] = "rf",
    task: Annotated[
        str,
        typer.Option(help="Task: a built-in name or a TOML task file (see tasks/)."),
    ] = "digits",
    holdout: Annotated[
        bool,
        typer.Option("--holdout", help="Leave the attacker-public rows out of training."),
    ] = False,
) -> None:
    """Train a victim on a task's training rows and save it safely (skops + metadata JSON)."""
    from modeltheft.victim import save_victim, train_victim

    trained = train_victim(model, task, holdout=holdout)
    meta = save_victim(trained.model, out, trained.metadata)
    console.print(
        f"trained {model} on {trained.metadata['task']}: "
        f"test accuracy {trained.metadata['test_accuracy']:.3f}"
    )
    console.print(f"saved {out} and {meta}")


@app.command(
    cls=registered.with_choices(
        {
            "task": registered.tasks,
            "defense": registered.presets,
            "upstream_protocol": registered.upstream_protocols,
        }
    )
)
def serve(
    model: Annotated[
        Path | None,
        typer.Option(
            help="The classifier to serve: a .skops file ('modeltheft train', or a plain "
            "skops.io.dump, imported with a warning) or an .onnx classifier. Default: train "
            "an rf victim on the task at start-up."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="Task the model answers: a built-in name or a TOML task file; checked "
            "against the model. Default: the model's metadata, else its width "
            "and classes."
        ),
    ] = None,
    defense: Annotated[str, typer.Option(help="A preset or a TOML file.")] = "none",
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8000,
    keys_file: Annotated[
        Path | None, typer.Option(help="File of name:sha256$salt$digest lines.")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most rows per request.")] = 256,
    max_header_bytes: Annotated[
        int,
        typer.Option(
            min=1024,
            help="Most bytes in a request's line and headers together; a longer head gets "
            "431 and its connection is closed.",
        ),
    ] = 16 * 1024,  # timeouts.DEFAULT_MAX_HEAD_BYTES, not imported here (FastAPI's cost)
    inference: Annotated[
        str,
        typer.Option(
            help="auto: onnxruntime when the model converts and agrees with scikit-learn "
            "within 1e-6, else scikit-learn; sklearn: always scikit-learn."
        ),
    ] = "auto",
    seed: Annotated[
        int | None, typer.Option(help="Seed the defenses' randomness (testing only).")
    ] = None,
    state: Annotated[
        str,
        typer.Option(
            help="Where the defenses keep per-client state: memory:// (this process only, lost "
            "on exit), sqlite:///file.db or sqlite:////abs/file.db (shared by this machine's "
            "workers, kept across restarts) or redis://\\[user:password@]host:port/db (shared "
            "by replicas). A missing SQLite file is created and logged as a new, empty state; "
            "a file that is not a SQLite database or cannot be written is an error."
        ),
    ] = "sqlite:///modeltheft-state.db",
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes (more than 1 needs sqlite or redis).")
    ] = 1,
    request_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a client has to send a request head, then its body; a slower client "
            "gets 408 and its connection is closed."
        ),
    ] = 10.0,
    audit_retention: Annotated[
        str,
        typer.Option(
            help="How long the state keeps the audit log of queries, e.g. 7d, 12h, 30m; "
            "0 disables it. Read it with 'modeltheft audit'."
        ),
    ] = "7d",
    idle_after: Annotated[
        str,
        typer.Option(
            help="How long a client may go without a request before its detector state is "
            "evicted from the state and the workers' memory (its status, alerts and quota "
            "stay), e.g. 7d, 12h, 30m or 3600 (seconds); > 0.",
        ),
    ] = "7d",
    timeout_graceful_shutdown: Annotated[
        int,
        typer.Option(min=1, help="Seconds to finish open requests after SIGTERM or Ctrl-C."),
    ] = 10,
    log_format: Annotated[
        str, typer.Option(help="text, or json: one JSON object per line (ours and uvicorn's).")
    ] = "text",
    access_log: Annotated[
        bool,
        typer.Option(help="Log one line per request: method, route, status, client, rows, time."),
    ] = True,
    model_name: Annotated[
        str | None,
        typer.Option(
            help="The model's name on the OIP v2 and KServe v1 routes (default: the "
            "model file's stem); with --upstream, also the upstream's name for it."
        ),
    ] = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            help="Gateway mode: guard the model this server serves (e.g. an MLServer at "
            "http://127.0.0.1:8080) instead of --model. Admitted rows are sent to it; the "
            "defenses transform its answers. Its API key, if it needs one: "
            "MODELTHEFT_UPSTREAM_KEY."
        ),
    ] = None,
    upstream_protocol: Annotated[
        str,
        typer.Option(help="The upstream's API (oip-v2: MLServer, KServe v2, Triton)."),
    ] = "oip-v2",
    upstream_timeout: Annotated[
        float,
        typer.Option(help="Seconds the upstream has to answer a batch; else 504."),
    ] = 5.0,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="With --upstream: a .npy file of rows like the model's training data (yours, "
            "never a client's). The gateway asks the upstream for their labels at start-up; "
            "they are the task's data the out-of-distribution stages compare queries with."
        ),
    ] = None,
) -> None:
    """Serve the victim behind a defense pipeline: POST /v1/predict, GET /v1/model, GET /healthz,
    and the Open Inference Protocol v2 (/v2/models/NAME/infer) and KServe v1 routes."""
    import logging.config
    import os

    import uvicorn

    from modeltheft.cli.preflight import check_serve_inputs
    from modeltheft.service import Settings, create_app
    from modeltheft.service.app import SETTINGS_ENV, settings_env
    from modeltheft.service.auth import KeyRing, MetricsKey
    from modeltheft.service.observability import log_config, multiprocess_metrics
    from modeltheft.service.runner import run_workers
    from modeltheft.service.timeouts import protocol_for
    from modeltheft.service.upstream import UPSTREAM_KEY_ENV, UpstreamConfig
    from modeltheft.state import redact_url
    from modeltheft.state.audit import parse_duration

    idle_seconds = parse_duration(idle_after, "--idle-after")
    if idle_seconds <= 0:
        raise ConfigError(f"--idle-after must be > 0 (e.g. 7d, 12h or 3600), got {idle_after!r}")
    if workers > 1 and state.strip().lower().startswith("memory:"):
        raise ConfigError("memory state is per process; use sqlite or redis with --workers")
    logging_config = log_config(log_format)  # uvicorn applies it, in every worker too
    if log_format == "json":  # from the first line on, every line of the output is JSON
        logging.config.dictConfig(logging_config)
    gateway = None
    if upstream is not None:
        gateway = UpstreamConfig(
            url=upstream,
            protocol=upstream_protocol,
            model_name=model_name,
            timeout=upstream_timeout,
            reference=reference,
            api_key=os.environ.get(UPSTREAM_KEY_ENV) or None,
        )
    elif reference is not None:
        raise ConfigError("--reference goes with --upstream (a served model has its task's data)")
    # The keys last: a bad model, task, defense or state is named as such, not as missing keys.
    check_serve_inputs(model, task, defense, state, gateway=upstream is not None)
    keys = KeyRing.from_sources(keys_file)
    if workers > 1 and Path(defense).is_file():
        defense = str(Path(defense).resolve())  # the workers must find the same file
    settings = Settings(
        keys=keys,
        model_path=model,
        task=task,
        defense=defense,
        max_batch=max_batch,
        max_header_bytes=max_header_bytes,
        seed=seed,
        state=state,
        inference=inference,
        request_timeout=request_timeout,
        audit_retention=parse_duration(audit_retention, "--audit-retention"),
        idle_after=idle_seconds,
        access_log=access_log,
        metrics_key=MetricsKey.from_env(),
        model_name=model_name,
        upstream=gateway,
    )
    # Built here even with workers: a bad model, defense or state fails once, in one line.
    application = create_app(settings)
    served = application.state.guarded.task
    verb, engine = "serving", f", {application.state.inference} inference"
    if application.state.upstream is not None:
        verb, engine = "guarding", ""
    rows = f", {len(served.data.X_train):,} reference rows" if served.data is not None else ""
    banner = (
        f"{verb} {application.state.model_name} (task {served.name}: {served.n_features} "
        f"features, {served.n_classes} classes{rows}) with defense {defense!r} on "
        f"http://{host}:{port} for {len(keys)} client(s), state {redact_url(state)}, "
        f"{workers} worker(s){engine}; OIP v2 model name {application.state.oip_name!r}"
    )
    if log_format == "json":
        logging.getLogger("modeltheft.service").info(banner)
    else:
        console.print(banner, markup=False, highlight=False, soft_wrap=True)
    server_options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "log_config": logging_config,
        "access_log": False,  # replaced by modeltheft.access (no query strings, no headers)
        "http": protocol_for(settings),  # head deadline and size, lingering close
        "timeout_graceful_shutdown": timeout_graceful_shutdown,
    }
    _exit_zero_on_sigterm()
    if workers == 1:
        uvicorn.run(application, **server_options)
        return
    application.state.store.close()
    previous = os.environ.get(SETTINGS_ENV)
    os.environ[SETTINGS_ENV] = settings_env(settings, keys_file)
    try:
        with multiprocess_metrics():  # set before the workers import prometheus_client
            # A worker that cannot start stops the service at once: WorkerStartFailed, exit 1.
            run_workers(
                "modeltheft.service.app:app_from_env",
                workers,
                **server_options,
                **_worker_start_timeout(),
            )
    finally:
        if previous is None:
            os.environ.pop(SETTINGS_ENV, None)
        else:
            os.environ[SETTINGS_ENV] = previous


def _worker_start_timeout() -> dict[str, Any]:
    """Give each worker a minute to load the model and its task's rows (uvicorn ≥ 0.33 kills a
    worker not ready within 5 s, which a loaded 2-core machine can exceed)."""
    import inspect

    import uvicorn

    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        return {"timeout_worker_healthcheck": 60}
    return {}


def _exit_zero_on_sigterm() -> None:
    """Make SIGTERM end ``serve`` with status 0 once uvicorn has drained the open requests.

    uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it
    found; the default one would kill the process (status -15) after a clean shutdown.
    """
    import signal
    import threading

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(0)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminated)


@app.command(
    cls=registered.with_choices(
        {
            "protocol": registered.protocols,
            "strategy": registered.strategies,
            "param": registered.sources,
            "substitute": registered.substitutes,
            "label_mode": registered.label_modes,
            "task": registered.tasks,
        }
    )
)
def attack(
    target: Annotated[str, typer.Option(help="Base URL of the prediction API.")],
    out: Annotated[Path, typer.Option(help="Folder for the stolen model, query log and results.")],
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="MODELTHEFT_API_KEY",
            help="API key (or set MODELTHEFT_API_KEY); required for --protocol modeltheft, "
            "sent as a Bearer token for the others if given.",
        ),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(help="API protocol (oip-v2: KServe v2, MLServer, Triton)."),
    ] = "modeltheft",
    model_name: Annotated[
        str | None, typer.Option(help="Model name in the URL (required for oip-v2, kserve-v1).")
    ] = None,
    strategy: Annotated[str, typer.Option(help="Query strategy.")] = "owasp-synthetic",
    param: Annotated[
        list[str] | None,
        typer.Option(help="Strategy parameter key=value (repeatable), e.g. pool=rendered-digits."),
    ] = None,
    budget: Annotated[int, typer.Option(min=1, help="Queries to spend.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the attack's random choices.")] = 0,
    substitute: Annotated[str, typer.Option(help="Substitute model the thief fits.")] = "lr",
    label_mode: Annotated[
        str, typer.Option(help="Learn from hard labels, soft (full probabilities) or top-k.")
    ] = "hard",
    top_k: Annotated[int, typer.Option(min=1, help="k for --label-mode top-k.")] = 3,
    checkpoints: Annotated[
        str | None,
        typer.Option(help="Query counts for the budget curve, e.g. 100,300 (default: 10 steps)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per request.")] = 1,
    on_rate_limit: Annotated[
        str, typer.Option(help="'count' refused queries or 'wait' them out.")
    ] = "count",
    victim: Annotated[
        Path | None,
        typer.Option(
            help="Your own copy of the victim (skops or ONNX, any classifier), to measure "
            "fidelity on the evaluation rows."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="The target's task: a built-in name or a task TOML file; default: what the "
            "API says of itself."
        ),
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option(
            help="Rows to measure the copy on: CSV/Parquet with a label column, or NPY "
            "(features only: fidelity only). Default: the task's own evaluation rows."
        ),
    ] = None,
    label_column: Annotated[
        str, typer.Option(help="Label column of --eval-data (CSV/Parquet).")
    ] = "label",
    output: Annotated[
        list[str] | None,
        typer.Option(
            help="OIP v2 output to ask for (repeatable), e.g. predict_proba or probabilities; "
            "default: chosen from the metadata, probabilities when the label mode needs them."
        ),
    ] = None,
    datatype: Annotated[
        str | None,
        typer.Option(help="OIP v2 input datatype, FP32 or FP64; default: the metadata's."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Reuse the query log in --out even if another target answered it."
        ),
    ] = False,
) -> None:
    """Steal a model through its API; an interrupted run continues from its query log.

    Fidelity and accuracy are measured on the task's evaluation rows (--eval-data, else the
    task's own when it has data); without any, only the budget curve of answers is reported.
    """
    from modeltheft.attacks.spec import AttackSpec, parse_params
    from modeltheft.cli.attack import parse_checkpoints, run_attack
    from modeltheft.oracle import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown --protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "modeltheft" and not api_key:
        raise ConfigError(
            "--api-key (or MODELTHEFT_API_KEY) is required with --protocol modeltheft"
        )
    if protocol != "modeltheft" and not model_name:
        raise ConfigError(f"--model-name is required with --protocol {protocol}")
    if (output or datatype is not None) and protocol != "oip-v2":
        raise ConfigError("--output and --datatype are options of --protocol oip-v2")
    if datatype is not None and datatype not in ("FP32", "FP64"):
        raise ConfigError(f"--datatype takes FP32 or FP64, got {datatype!r}")
    spec = AttackSpec(
        strategy=strategy,
        params=parse_params(param or []),
        substitute=substitute,
        label_mode=label_mode,
        top_k=top_k,
        budget=budget,
        batch_size=batch_size,
        checkpoints=parse_checkpoints(checkpoints, budget),
        seed=seed,
    )
    run_attack(
        spec,
        target=target,
        out=out,
        api_key=api_key,
        on_rate_limit=on_rate_limit,
        victim_path=victim,
        console=console,
        protocol=protocol,
        model_name=model_name,
        task=task,
        eval_data=eval_data,
        label_column=label_column,
        outputs=output,
        datatype=datatype,
        force=force,
    )


@app.command(cls=registered.with_choices({"task": registered.tasks}))
def demo(
    repeats: Annotated[
        int, typer.Option(min=1, help="Repeat each scenario over this many seeds.")
    ] = 5,
    seed: Annotated[int, typer.Option(help="Root seed of the whole run.")] = 42,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/demo"),
    budget: Annotated[int, typer.Option(min=51, help="Queries per attack.")] = 300,
    report: Annotated[
        bool, typer.Option("--report", help="Also write the HTML report (OUT/report/).")
    ] = False,
    task: Annotated[
        str,
        typer.Option(
            help="The lab's task: digits (the OWASP lab), another built-in task or a task "
            "TOML file with data."
        ),
    ] = "digits",
) -> None:
    """The OWASP ML05 lab in one command: victim, real HTTP service, attack, defenses, plots."""
    from modeltheft.cli.demo import run_demo

    run_demo(
        repeats=repeats,
        seed=seed,
        out=out,
        budget=budget,
        console=console,
        report=report,
        task=task,
    )


@keys_app.command("new")
def keys_new(name: Annotated[str, typer.Argument(help="Client name for the key.")]) -> None:
    """Make a random key: prints the key once, and the line to add to a keys file."""
    from modeltheft.service.auth import check_client_name, hash_key, new_key

    check_client_name(name)  # the names key loading accepts, no more
    key = new_key()
    console.print(f"key (shown once, give it to the client): {key}")
    console.print(f"keys-file line: {name}:{hash_key(key)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: domain and usage errors become one line on stderr and exit code 1."""
    err = Console(stderr=True)
    try:
        result = app(args=argv, standalone_mode=False, prog_name="modeltheft")
    except typer.Abort:
        err.print("aborted")
        return 1
    except typer.exceptions.TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(
            f"error: {' '.join(message.split())}", markup=False, highlight=False, soft_wrap=True
        )
        return 1
    except ModelTheftError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except OSError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 1
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script wrapper around :func:`main`."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
