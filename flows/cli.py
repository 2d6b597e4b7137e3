"""The ``winnow`` command line."""
from __future__ import annotations

import argparse
import os
import sys


def _positive_int(v: str) -> int:
    i = int(v)
    if i <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return i


def _rate(v: str) -> float:
    r = float(v)
    if not 0.0 <= r < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {v}")
    return r


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="winnow",
        description="Find the training samples whose labels are most likely wrong, prune them, retrain, "
                    "and gate the release on data checks.")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks of refused input too (also WINNOW_DEBUG=1); allowed anywhere on the line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="audit a data set: noise -> train -> score -> prune -> retrain -> measure",
                         description="Run the audit flow (Prefect) and print the summary table.")
    run.add_argument("--dataset", choices=["digits", "fashion-mnist", "parquet", "anomaly"], default="digits")
    run.add_argument("--path", help="Fashion-MNIST IDX folder, or the Parquet file for --dataset parquet")
    run.add_argument("--limit", type=_positive_int, help="use at most N samples (training split for fashion-mnist)")
    run.add_argument("--noise", choices=["none", "symmetric", "class-pair", "instance-dependent"], default="symmetric")
    run.add_argument("--rate", type=_rate, default=0.2, help="fraction of training labels to flip (default 0.2)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--model", choices=["mlp", "cnn", "cnn1d"], default="mlp")
    run.add_argument("--scorers", default="loss,confident,random",
                     help="comma-separated scorer names (see `winnow scorers`)")
    run.add_argument("--prune-k", type=int, help="how many to prune (default: confident learning's noise estimate)")
    run.add_argument("--epochs", type=_positive_int, help="override the recipe's epoch count")
    run.add_argument("--refresh", action="store_true", help="ignore cached stage results and recompute")
    run.add_argument("--explain", type=_positive_int, default=0, metavar="N",
                     help="then explain the top N flagged samples of the first scorer (see `winnow explain`)")
    run.add_argument("--format", choices=["table", "csv", "json"], default="table")

    sql = sub.add_parser("sql", help="query the lake with DuckDB SQL",
                         description="Run a DuckDB query over the lake (views: samples, noise, scores, metrics, runs, ...).")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")

    sub.add_parser("scorers", help="list the registered scorers", description="List the registered scorers.")
    for module in _plugin_modules():
        COMMANDS.update(module.add_commands(sub))
    return parser


# Flow modules that bring their own subcommands: each defines ``add_commands(subparsers)``
# returning {name: handler(args) -> exit code}. Listed here, in one place.
PLUGINS = ("winnow.flows.benchmark", "winnow.flows.operate", "winnow.flows.explain", "winnow.flows.doctor")


def _plugin_modules():
    import importlib
    import importlib.util

    for name in PLUGINS:
        if importlib.util.find_spec(name) is not None:
            yield importlib.import_module(name)


def print_frame(df, fmt: str, title: str | None = None) -> None:
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", indent=1, default_handler=str) + "\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for c in df.columns:
            table.add_column(str(c), justify="right" if df[c].dtype.kind in "fiu" else "left")
        for row in df.itertuples(index=False):
            table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
        Console(width=max(100, 20 * len(df.columns))).print(table)


def cmd_run(args) -> int:
    import errno

    from winnow.tasks.scorers import parse_scorer_list

    parse_scorer_list(args.scorers)  # fail before a Prefect server is started for nothing
    if args.path and not os.path.exists(args.path):
        raise FileNotFoundError(errno.ENOENT, "no such file or folder (--path)", args.path)
    if args.refresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    from winnow.flows.audit import audit

    result = audit(dataset=args.dataset, path=args.path, limit=args.limit, noise=args.noise, rate=args.rate,
                   seed=args.seed, model=args.model, scorers=args.scorers, prune_k=args.prune_k, epochs=args.epochs,
                   explain_top=args.explain)
    table = result.table()[["scorer", "auroc", "ap", "precision_at_k", "recall_at_k", "pruned_accuracy", "seconds"]]
    table = table.rename(columns={"auroc": "AUROC", "ap": "AP", "precision_at_k": "P@k", "recall_at_k": "R@k",
                                  "pruned_accuracy": "acc. after pruning", "seconds": "score s"})
    if args.format == "table":
        print_frame(table, "table", title=f"winnow audit · k = {result.k} ({result.k_source})")
        print(f"test accuracy: noisy {result.accuracy['noisy']:.4f} · oracle {result.accuracy['oracle']:.4f}")
        cached = [s["name"] for s in result.stages if s["cached"]]
        print(f"stages served from cache: {', '.join(cached) if cached else 'none'}")
        print(f"lake run_id: {result.run_id}")
        print(f"MLflow run id: {result.mlflow_run_id}")
    else:
        print_frame(table.assign(mlflow_run_id=result.mlflow_run_id, run_id=result.run_id), args.format)
    return 0


def cmd_sql(args) -> int:
    from winnow.tasks import lake

    try:
        df = lake.sql(args.query)
    except Exception as exc:  # duckdb raises its own error types; show the one line that matters
        print(f"winnow sql: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print_frame(df, args.format)
    return 0


def cmd_scorers(args) -> int:
    from winnow.tasks.scorers import available, get_scorer

    for name in available():
        print(f"{name:14s} {get_scorer(name).summary}")
    return 0


COMMANDS = {"run": cmd_run, "sql": cmd_sql, "scorers": cmd_scorers}

# Commands that only read WINNOW_HOME: they run on a read-only home too.
READ_ONLY_COMMANDS = {"sql", "scorers", "doctor"}


def check_home_writable(home) -> None:
    """Refuse up front, naming the folder, when WINNOW_HOME (or one of its folders) cannot be
    written: otherwise the failure would surface minutes later, deep in a stage or in Prefect's
    database. Raises PermissionError / OSError with ``filename`` set."""
    import errno
    import tempfile
    from pathlib import Path

    home = Path(home)
    for folder in [home, *sorted(p for p in home.iterdir() if p.is_dir())]:
        try:
            fd, probe = tempfile.mkstemp(prefix=".winnow-write-probe-", dir=folder)
        except OSError as exc:
            raise OSError(exc.errno or errno.EACCES, f"cannot write here ({exc.strerror or exc})",
                          str(folder)) from None
        os.close(fd)
        os.unlink(probe)


def _stop_temporary_prefect_server() -> None:
    """Stop the temporary Prefect server a flow run started (none when PREFECT_API_URL is set):
    before the cause is printed, so Prefect's "Stopping temporary server" line comes first."""
    if "prefect.logging.handlers" in sys.modules:
        # Deliver the run's queued logs and events while the server is still up (at interpreter
        # exit they would meet a stopped server: "--- Error logging to API ---" after the cause).
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for service in (APILogWorker, EventsWorker):
            service.drain_all(timeout=5)
    if "prefect.server.api.server" not in sys.modules:
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        SubprocessASGIServer().stop()  # the port-less instance is the temporary server


def main(argv: list[str] | None = None) -> int:
    """Run one command; every way out goes through :func:`winnow.flows.failures.report`
    (exit codes: 0 ok, 1 gate failed, 2 refused, 3 bug, 128+N stopped by signal N)."""
    import signal

    from winnow.tasks import lifecycle

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if debug:
        os.environ["WINNOW_DEBUG"] = "1"
    command = next((a for a in argv if not a.startswith("-")), "")
    # Processes alive now are not ours to end (a test harness's server, when main() runs in-process).
    spared = set(lifecycle.descendants())
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    lifecycle.install_signal_handlers()
    failure = None
    code = 0
    try:
        from winnow.tasks.settings import configure_environment

        home = configure_environment().home
        args = build_parser().parse_args(argv)
        command = args.command
        if command not in READ_ONLY_COMMANDS:
            check_home_writable(home)
        code = COMMANDS[command](args)
    except SystemExit:  # argparse's own refusal (usage + message, exit 2) or --help
        raise
    except BaseException as exc:  # noqa: BLE001 - every way out is reported below
        failure = exc
    finally:
        lifecycle.ignore_signals()
        try:
            lifecycle.on_shutdown(_stop_temporary_prefect_server, "temporary Prefect server")
            problems = lifecycle.shutdown(spare=spared)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    for line in problems:
        print(f"winnow {command}: warning: {line}", file=sys.stderr)
    if failure is not None:
        from winnow.flows.failures import debug_enabled, report

        return report(command, failure, debug or debug_enabled(), sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
