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


def _image_size(v: str) -> tuple[int, int]:
    try:
        h, w = (int(p) for p in v.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be H,W (two integers), got {v!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"must be two positive integers, got {v!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="winnow",
        description="Find the training samples whose labels are most likely wrong, fix or remove them, "
                    "retrain, and gate the release on data checks.")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks of refused input too (also WINNOW_DEBUG=1); allowed anywhere on the line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="audit a data set: noise -> train -> score -> remedy -> retrain -> measure",
                         description="Run the audit flow (Prefect) and print the summary table.")
    run.add_argument("--dataset", choices=["digits", "fashion-mnist", "images", "parquet", "anomaly"], default="digits",
                     help="built-in data (digits, fashion-mnist, anomaly) or your own: images (a folder) or parquet")
    run.add_argument("--path", help="your image folder (--dataset images: class folders or labels.csv), your Parquet "
                                    "file (--dataset parquet), or the Fashion-MNIST IDX folder")
    run.add_argument("--limit", type=_positive_int, help="use at most N samples (training split for fashion-mnist)")
    run.add_argument("--noise", choices=["none", "symmetric", "class-pair", "instance-dependent"],
                     help="inject noise to grade the detectors (default: symmetric for the built-in data sets, "
                          "none for images/parquet: audit the labels as given)")
    run.add_argument("--rate", type=_rate, default=0.2, help="fraction of training labels to flip (default 0.2)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--model", choices=["mlp", "cnn", "cnn1d"], default="mlp",
                     help="mlp for features/tabular data (and any shape), cnn for images, cnn1d for signals")
    run.add_argument("--scorers", help="comma-separated scorer names (see `winnow scorers`; default: the recommended "
                                       "detector first, then loss and confident learning)")
    data = run.add_argument_group("your data (--dataset images|parquet)")
    data.add_argument("--classes", help="the class names in index order, comma-separated (labels may be names or "
                                        "indices); default: the file's metadata, else inferred")
    data.add_argument("--num-classes", type=_positive_int, help="the number of classes (labels 0..N-1)")
    data.add_argument("--min-class-samples", type=_positive_int, default=2,
                      help="refuse a class with fewer samples (default 2)")
    data.add_argument("--label-column", default="label", help="the Parquet column holding the labels (default label)")
    data.add_argument("--shape", help="C,H,W of flat pixel arrays (or of 'features' that are flattened images)")
    data.add_argument("--image-size", type=_image_size, metavar="H,W",
                      help="resize images to H,W (default: the most common size in the data)")
    data.add_argument("--backbone", help="your exported encoder (torch.export .pt2 or TorchScript): the MLP head is "
                                         "trained on its embeddings of the images")
    run.add_argument("--prune-k", type=int, help="how many to flag (default: the estimated number of wrong labels)")
    from winnow.tasks.remedies import DEFAULT_REMEDY, REMEDIES

    run.add_argument("--remedy", choices=list(REMEDIES), default=DEFAULT_REMEDY,
                     help="with injected noise: what is done with each scorer's top k before retraining (default "
                          f"{DEFAULT_REMEDY}). prune = drop them; relabel = the out-of-sample consensus where it is "
                          "confident, else drop; relabel-other = the out-of-sample runner-up class; relabel-agreed = "
                          "the class the out-of-sample folds and the label-free probe both put first after the given "
                          "one, else drop; relabel-soft = train them on the average of those two opinions' "
                          "probabilities (a soft target, nothing dropped); soft-all = relabel-soft, and every other "
                          "row trains on half its label, half those opinions; weight = draw them less often; semi = "
                          "keep the inputs, pseudo-label them from a model trained on the rest; gce = retrain "
                          "every row with the generalized cross-entropy; select = keep whichever of no change, "
                          "prune, relabel, gce has the best cross-validated accuracy on the given labels, no change "
                          "unless one clearly wins")
    run.add_argument("--epochs", type=_positive_int, help="override the recipe's epoch count")
    run.add_argument("--refresh", action="store_true", help="ignore cached stage results and recompute")
    run.add_argument("--explain", type=_positive_int, default=0, metavar="N",
                     help="then explain the top N flagged samples of the first scorer (see `winnow explain`)")
    run.add_argument("--format", choices=["table", "csv", "json"], default="table")
    from winnow.flows.scaleout import worker_options

    worker_options(run)

    sql = sub.add_parser("sql", help="query the lake with DuckDB SQL",
                         description="Run a DuckDB query over the lake (views: samples, noise, scores, metrics, runs, ...).")
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")

    ex = sub.add_parser("export", help="write the audited data set with the review decisions applied",
                        description="Write the data set of an audit run, in the input's own form, with reviewers' "
                                    "decisions applied and a provenance column (kept / relabelled from X); the "
                                    "batch suite checks it before it is written.")
    ex.add_argument("run", help="the audit's lake run id or MLflow run id (a unique prefix is enough)")
    ex.add_argument("--out", help="the .parquet file to write (not needed with --dry-run)")
    ex.add_argument("--drop", choices=["reviewed", "flagged", "none"], default="reviewed",
                    help="reviewed: what reviewers dropped (default); flagged: also every flagged sample no reviewer "
                         "decided on; none: nothing")
    ex.add_argument("--relabel", choices=["reviewed", "flagged", "soft", "none"], default="reviewed",
                    help="reviewed: reviewers' relabels (default); flagged: also undecided flags to their suggested "
                         "label; soft: as flagged, plus a winnow_soft_label column with every row's training "
                         "target as winnow's default remedy soft-all sets it (flagged rows: the suggestion's class "
                         "distribution; the others: half their label, half that; null where a reviewer decided); "
                         "none: the given labels")
    ex.add_argument("--dry-run", action="store_true", help="print the counts, write nothing")

    sub.add_parser("scorers", help="list the registered scorers", description="List the registered scorers.")
    for module in _plugin_modules():
        COMMANDS.update(module.add_commands(sub))
    return parser


# Flow modules that bring their own subcommands: each defines ``add_commands(subparsers)``
# returning {name: handler(args) -> exit code}. Listed here, in one place.
PLUGINS = ("winnow.flows.benchmark", "winnow.flows.arrival_commands", "winnow.flows.watch", "winnow.flows.review_app",
           "winnow.flows.explain", "winnow.flows.doctor")


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

    from winnow.tasks.data.classes import ClassSpec
    from winnow.tasks.data.tables import parse_shape
    from winnow.tasks.scorers import parse_scorer_list
    from winnow.flows.scaleout import run_flow, runner_from_args
    from winnow.tasks.stages import InputOptions

    # fail before a Prefect server is started for nothing
    if args.scorers is not None:
        parse_scorer_list(args.scorers)
    ClassSpec.parse(args.classes, args.num_classes, args.min_class_samples)
    parse_shape(args.shape)
    if args.dataset in ("images", "parquet") and not args.path:
        raise ValueError(f"--dataset {args.dataset} needs --path")
    if args.path and not os.path.exists(args.path):
        raise FileNotFoundError(errno.ENOENT, "no such file or folder (--path)", args.path)
    runner = runner_from_args(args)  # and on a cluster that is not there
    from winnow.flows.audit import audit
    from winnow.tasks.settings import refresh_cache

    inputs = InputOptions(args.classes, args.num_classes, args.shape, args.image_size, args.label_column,
                          args.min_class_samples).as_dict()
    with refresh_cache(args.refresh):
        result = run_flow(audit, runner, dataset=args.dataset, path=args.path, limit=args.limit, noise=args.noise,
                          rate=args.rate, seed=args.seed, model=args.model, scorers=args.scorers,
                          prune_k=args.prune_k, epochs=args.epochs, explain_top=args.explain, inputs=inputs,
                          backbone=args.backbone, remedy=args.remedy)
    if result.mode == "real":
        return _print_real(result, args.format)
    table = result.table()[["scorer", "auroc", "ap", "precision_at_k", "recall_at_k", "pruned_accuracy", "seconds"]]
    table = table.rename(columns={"auroc": "AUROC", "ap": "AP", "precision_at_k": "P@k", "recall_at_k": "R@k",
                                  "pruned_accuracy": "acc. after pruning" if args.remedy == "prune" else f"acc. after {args.remedy}",
                                  "seconds": "score s"})
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


def _print_real(result, fmt: str) -> int:
    """What a user auditing real labels needs: how many look wrong, which, what they should be,
    and what to run next."""
    est = result.estimate
    flagged = result.flagged[["sample_id", "split", "given_class", "suggested_class", "score"]].rename(
        columns={"given_class": "given", "suggested_class": "suggested"})
    if fmt != "table":
        print_frame(flagged.assign(run_id=result.run_id, mlflow_run_id=result.mlflow_run_id), fmt)
        return 0
    print(f"estimated wrong labels: {est['estimated_wrong_labels']:,} of {est['samples']:,} "
          f"({est['estimated_noise_rate']:.1%}) — {est['estimator']} ({est['folds']})")
    print(f"data: {result.params['data_kind']} ({result.params['form']}); classes: {result.params['classes']}")
    test = f"; test rows {est['test_oos_accuracy']:.4f}" if est["test_rows"] else ""
    print(f"out-of-sample agreement with the given labels: {est['oos_accuracy']:.4f}{test}")
    top = flagged.head(20).reset_index(drop=True)
    top.insert(0, "rank", range(1, len(top) + 1))
    print_frame(top, "table", title=f"top {len(top)} of {len(flagged)} flagged (by {result.params['scorers'].split(',')[0]})")
    print(f"lake run_id: {result.run_id}")
    print(f"MLflow run id: {result.mlflow_run_id}")
    print("next: review   winnow review list   (or: winnow review relabel ID --to N / drop ID / accept ID)")
    print(f"      export   winnow export {result.run_id} --out cleaned.parquet   "
          f"(--relabel soft: every row's training target, the default remedy soft-all)")
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


def cmd_export(args) -> int:
    from winnow.tasks.export import export

    if not args.dry_run and not args.out:
        raise ValueError("--out FILE.parquet is required (or --dry-run)")
    counts = export(args.run, args.out, args.drop, args.relabel, args.dry_run)
    what = "would write" if args.dry_run else f"wrote {counts['out']}:"
    soft = f", {counts['soft']:,} with a soft label (column winnow_soft_label)" if args.relabel == "soft" else ""
    print(f"{what} {counts['kept']:,} of {counts['rows']:,} rows ({counts['dropped']:,} dropped, "
          f"{counts['relabelled']:,} relabelled{soft}) from run {counts['run_id']}")
    return 0


def cmd_scorers(args) -> int:
    from winnow.tasks.scorers.base import RECOMMENDED
    from winnow.tasks.scorers import available, get_scorer

    # the recommended detector first: it is the default and ranks the flags
    for name in [RECOMMENDED] + [n for n in available() if n != RECOMMENDED]:
        print(f"{name:14s} {get_scorer(name).summary}")
    return 0


COMMANDS = {"run": cmd_run, "sql": cmd_sql, "export": cmd_export, "scorers": cmd_scorers}

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
