"""Where a flow's tasks run: one after another in the flow's process (the default), or on Dask.

``--workers N`` starts a local Dask cluster of N worker *processes* (one thread each) for the
flow run; ``--dask ADDRESS`` uses an existing cluster (checked before any work: an unreachable
address, or a worker with more than one thread, is refused). Both go through Prefect's own
``DaskTaskRunner`` (prefect-dask); :class:`Stages` submits a flow's independent tasks there and
records, per stage, whether it came from cache and how long its task ran.

What reaches the workers: every task carries the flow's Prefect settings (API URL, result
storage, cache refresh), serialised by Prefect. ``WINNOW_HOME`` and ``MLFLOW_TRACKING_URI`` are
process environment: a local cluster's workers inherit the flow process's; workers of an existing
cluster must be started with the same values (``WINNOW_HOME`` on storage every worker sees), which
:func:`check_cluster` verifies.

Worker processes are ended with the flow run; :func:`end_worker_processes` ends them at once
(the CLI calls it on SIGINT/SIGTERM).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlparse

from winnow.tasks.settings import paths

#: pids of the worker processes of the local clusters this process started (ended on signals)
_WORKER_PIDS: set[int] = set()


# ---------------------------------------------------------------- the task runner


def _torch_threads_plugin(threads: int):
    from distributed import WorkerPlugin

    class TorchThreads(WorkerPlugin):
        """Each worker runs torch with the flow's intra-op thread count: the same arithmetic as
        a sequential run (and no thread pools spinning against each other on a small CPU)."""

        name = "winnow-torch-threads"

        def __init__(self, n: int):
            self.n = n

        def setup(self, worker) -> None:
            import torch

            torch.set_num_threads(self.n)
            # Import what the tasks run (the stages, GX, scikit-learn) now, every worker at once,
            # not inside the first task each gets: under load those imports outlast a small task
            # (a 16 s gap with no task running while the first validate imported GX, measured on
            # `benchmark --quick --workers 2`). In setup, not in a thread: no import races a task's.
            _warm_imports()

    return TorchThreads(threads)


#: modules a worker imports when it starts (see the worker plugin's setup)
WARM_MODULES = ("winnow.tasks.stages", "winnow.tasks.protocols", "great_expectations", "sklearn.model_selection")


def _warm_imports() -> None:
    import importlib

    for name in WARM_MODULES:
        with contextlib.suppress(Exception):  # an optional peer missing, say: the task will say so
            importlib.import_module(name)


def _runner_class():
    from prefect_dask import DaskTaskRunner

    class WinnowDaskTaskRunner(DaskTaskRunner):
        """``DaskTaskRunner`` that sets torch's thread count on every worker and registers the
        local cluster's worker processes for :func:`end_worker_processes`."""

        def __init__(self, *args, torch_threads: int = 1, **kwargs):
            super().__init__(*args, **kwargs)
            self.torch_threads = torch_threads

        @property
        def client(self):
            fresh = self._client is None
            client = DaskTaskRunner.client.fget(self)
            if fresh:
                client.register_plugin(_torch_threads_plugin(self.torch_threads))
                for worker in (getattr(self._cluster, "workers", None) or {}).values():
                    pid = getattr(worker, "pid", None)
                    if pid:
                        _WORKER_PIDS.add(int(pid))
            return client

        def duplicate(self):
            return type(self)(address=self.address, cluster_class=self.cluster_class,
                              cluster_kwargs=self.cluster_kwargs, adapt_kwargs=self.adapt_kwargs,
                              client_kwargs=self.client_kwargs,
                              performance_report_path=self.performance_report_path,
                              torch_threads=self.torch_threads)

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            """prefect-dask's submit, with ``pure=False``: Dask then names the work by a fresh id
            instead of cloudpickling the task, its parameters and its context to hash them (about
            6 of the flow process's 23 ms a task, see :mod:`winnow.flows.task_overhead`). Each
            carries a new task-run id, so no two were ever the same computation; nothing is lost."""
            from prefect_dask.task_runners import PrefectDaskFuture

            if not self._started:
                raise RuntimeError("The task runner must be started before submitting work.")
            future = self.client.submit(task, parameters=self._optimize_futures(parameters),
                                        wait_for=self._optimize_futures(wait_for) if wait_for else None,
                                        dependencies=dependencies, return_type="state", pure=False)
            return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)

        def __enter__(self):
            from winnow.flows.task_overhead import lean_settings

            super().__enter__()
            # entered on the runner's own stack, so it ends when the runner does
            self._exit_stack.enter_context(lean_settings(paths().prefect_home))
            return self

        def __exit__(self, *args):
            pids = {int(w.pid) for w in (getattr(self._cluster, "workers", None) or {}).values()
                    if getattr(w, "pid", None)}
            try:
                super().__exit__(*args)
            finally:
                _WORKER_PIDS.difference_update(pids)

    return WinnowDaskTaskRunner


def task_runner(workers: int | None = None, address: str | None = None, torch_threads: int | None = None):
    """The Prefect task runner for ``--workers N`` / ``--dask ADDRESS``, or None (sequential).

    Parameters
    ----------
    workers : int, optional
        Start a local cluster of this many worker processes (one thread each) for the flow run.
    address : str, optional
        An existing Dask scheduler (``tcp://host:8786`` or ``host:8786``); checked now
        (:func:`check_cluster`), so a bad address fails before any work.
    torch_threads : int, optional
        torch intra-op threads per worker (default ``WINNOW_TORCH_THREADS`` or 1).

    Raises
    ------
    ValueError
        Both or a bad value given; the cluster unreachable or unfit (one line).
    """
    if workers is not None and address:
        raise ValueError("--workers and --dask exclude each other: give one")
    if workers is None and not address:
        return None
    threads = torch_threads or int(os.environ.get("WINNOW_TORCH_THREADS", "1"))
    if threads < 1:
        raise ValueError(f"torch threads per worker must be positive, got {threads}")
    runner = _runner_class()
    if address:
        address = check_cluster(address)
        return runner(address=address, torch_threads=threads)
    if workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {workers}")
    keep_dynamic_mmap_threshold()
    return runner(cluster_class="distributed.LocalCluster", torch_threads=threads, cluster_kwargs={
        "n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
        # tasks hold their own memory bounds; Dask's default pausing at 80% of a share of RAM
        # would stall a 2-worker cluster on a shared machine for nothing
        "memory_limit": 0,
    })


def keep_dynamic_mmap_threshold() -> None:
    """Start local Dask workers without ``MALLOC_TRIM_THRESHOLD_`` (Dask's nanny sets it by default).

    Setting it turns off glibc's dynamic mmap threshold: every buffer of 128 KiB or more (a
    training batch's activations) is then mapped and unmapped on each use. Measured here, one
    MLP training step (512 × 512) took 2.2 ms of system time and 1,250 page faults instead of
    0.22 ms and 70 — a third more CPU for every task that trains. Workers of an existing cluster
    (``--dask``) should be started without it too (``dask worker`` reads the same setting).
    """
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


def _host_port(address: str) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "tls") or not parsed.hostname:
        raise ValueError(f"--dask {address}: expected tcp://HOST:PORT")
    return parsed.hostname, parsed.port or 8786


def check_cluster(address: str, timeout: float = 5.0) -> str:
    """Check an existing Dask cluster before any work; returns the normalised address.

    Refused (``ValueError``, one line): nothing listening, not a Dask scheduler, no workers, a
    worker with more than one thread (tasks seed torch's process-wide generator, so two in one
    process would interleave their draws), or a worker that does not see this ``WINNOW_HOME``.
    """
    host, port = _host_port(address)
    normalised = f"{urlparse(address).scheme or 'tcp'}://{host}:{port}" if "://" in address else f"tcp://{host}:{port}"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(f"--dask {address}: no Dask scheduler reachable ({exc.strerror or exc})") from None
    from distributed import Client

    try:
        client = Client(normalised, timeout=timeout, set_as_default=False)
    except Exception as exc:  # distributed raises OSError/TimeoutError subclasses of its own
        raise ValueError(f"--dask {address}: not a Dask scheduler ({str(exc).splitlines()[0]})") from None
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        if not workers:
            raise ValueError(f"--dask {address}: the cluster has no workers (start some: dask worker {normalised})")
        multi = sorted(w["id"] for w in workers.values() if w.get("nthreads", 1) > 1)
        if multi:
            raise ValueError(f"--dask {address}: worker(s) {', '.join(map(str, multi))} run several threads; "
                             "start them with `dask worker --nthreads 1`")
        marker = paths().home / f".dask-check-{uuid.uuid4().hex}"
        marker.write_text("winnow")
        try:
            seen = client.run(_sees_file, str(marker))
        finally:
            marker.unlink(missing_ok=True)
        blind = sorted(w for w, ok in seen.items() if not ok)
        if blind:
            raise ValueError(f"--dask {address}: worker(s) {', '.join(blind)} do not see WINNOW_HOME "
                             f"{paths().home} (it must be on storage every worker mounts, same path)")
    finally:
        client.close()
    return normalised


def _sees_file(path: str) -> bool:
    return os.path.exists(path)


# ---------------------------------------------------------------- the Prefect API for workers


@contextlib.contextmanager
def shared_api():
    """Make sure the flow's Prefect API is a server the workers can reach.

    Without ``PREFECT_API_URL``, Prefect runs a flow against a temporary server it starts in
    the flow's process; a worker process would start one of its own. So start that temporary
    server here and point this process (and, through the environment, a local cluster's
    workers) at it.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")))
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


def run_flow(flow_fn, runner, **parameters):
    """Call ``flow_fn(**parameters)`` with ``runner`` (None = as declared: sequential)."""
    if runner is None:
        return flow_fn(**parameters)
    with shared_api():
        return flow_fn.with_options(task_runner=runner)(**parameters)


# ---------------------------------------------------------------- ending worker processes


def end_worker_processes(grace: float = 3.0) -> list[int]:
    """End the worker processes of the local clusters this process started (SIGTERM, then
    SIGKILL after ``grace`` seconds); returns their pids. Safe to call from a signal handler."""
    pids = sorted(_WORKER_PIDS)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _WORKER_PIDS.difference_update(pids)
    return pids


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:  # not our child (a nanny's): ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def worker_options(parser) -> None:
    """``--workers N`` / ``--dask ADDRESS`` on a subcommand."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, metavar="N",
                       help="run independent tasks on a local Dask cluster of N worker processes")
    group.add_argument("--dask", metavar="ADDRESS",
                       help="run independent tasks on an existing Dask cluster (tcp://HOST:8786); "
                            "its workers need 1 thread each and this WINNOW_HOME")


def runner_from_args(args) -> Any:
    """The task runner the CLI options ask for (checked now). Its local worker processes are
    ended with the CLI's other children on exit, SIGINT or SIGTERM (:mod:`winnow.tasks.lifecycle`)."""
    from winnow.tasks import lifecycle

    runner = task_runner(getattr(args, "workers", None), getattr(args, "dask", None))
    if runner is not None:
        lifecycle.on_shutdown(end_worker_processes, "dask workers")
    return runner


# ---------------------------------------------------------------- submitting a flow's tasks


def reset_peak_rss() -> None:
    """Start a new peak-resident-memory window for this process (Linux: ``clear_refs`` 5 resets
    ``VmHWM``); a no-op where the kernel offers no such file."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")


def release_freed_memory() -> None:
    """Hand the heap memory a finished stage freed back to the system (glibc ``malloc_trim``).

    A stage over 10^6 rows builds millions of small objects (ids, frames); freed, glibc keeps
    most of their pages, and a sequential run's process grew stage after stage (measured: 140 of
    260 MiB kept after one ``load_context`` at 10^6, returned by a trim). Dask's nanny gives its
    workers ``MALLOC_TRIM_THRESHOLD_`` for the same reason. A no-op without glibc.
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        with contextlib.suppress(AttributeError):
            _LIBC.malloc_trim(0)


_LIBC = None


def peak_rss_metric() -> dict[str, float]:
    """``{"peak_rss_gib": ...}``: this process's peak resident memory since :func:`reset_peak_rss`
    (``VmHWM``), or ``{}`` where ``/proc`` does not say."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return {"peak_rss_gib": round(int(line.split()[1]) / 2**20, 3)}
    return {}


class Pending:
    """A stage submitted by :meth:`Stages.submit`: a Prefect future, or (sequential) its value."""

    __slots__ = ("name", "future", "value", "resolved")

    def __init__(self, name: str, future=None, value=None, resolved: bool = False):
        self.name, self.future, self.value, self.resolved = name, future, value, resolved


def dask_active() -> bool:
    """Whether the current flow run's tasks go to a Dask cluster."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx else None
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        return False
    return isinstance(runner, DaskTaskRunner)


class Stages:
    """Runs a flow's tasks and records, per stage, whether it came from cache and its seconds.

    Sequential (the default task runner): :meth:`submit` runs the task at once, in the flow's
    process, exactly as a plain call. On Dask: :meth:`submit` hands the task to the cluster and
    returns; a :class:`Pending` given as an argument becomes a dependency the cluster resolves;
    :meth:`result` waits. Either way the tasks, their inputs and so their cache keys are the same.
    ``seconds`` is the task's own run time (on Dask, from its task run; stages then overlap);
    ``metrics`` holds its start and end (epoch seconds) and, run in sequence, the flow process's
    CPU seconds and peak resident memory during it (``cpu_seconds``, ``peak_rss_gib``).
    """

    def __init__(self, parallel: bool | None = None):
        self.records: list[dict] = []
        self.parallel = dask_active() if parallel is None else parallel
        self._submitted: list[Pending] = []

    def __call__(self, name: str, task, *args, **kwargs):
        return self.result(self.submit(name, task, *args, **kwargs))

    def submit(self, name: str, task, *args, wait_for: list[Pending] | tuple = (), **kwargs) -> Pending:
        if not self.parallel:
            args = tuple(self._value(a) for a in args)
            kwargs = {k: self._value(v) for k, v in kwargs.items()}
            for w in wait_for:
                self.result(w)
            t0, cpu0, started = time.perf_counter(), time.process_time(), time.time()
            reset_peak_rss()
            state = task(*args, return_state=True, **kwargs)
            value = state.result()  # raises the task's exception if it failed
            self.records.append({"name": name, "cached": state.name == "Cached",
                                 "seconds": round(time.perf_counter() - t0, 3),
                                 "metrics": {"started_at": started, "ended_at": time.time(),
                                             "cpu_seconds": round(time.process_time() - cpu0, 3),
                                             **peak_rss_metric()}})
            release_freed_memory()
            return Pending(name, value=value, resolved=True)
        args = tuple(self._future(a) for a in args)
        kwargs = {k: self._future(v) for k, v in kwargs.items()}
        future = task.submit(*args, wait_for=[self._future(w) for w in wait_for], **kwargs)
        self._submitted.append(Pending(name, future=future))
        return self._submitted[-1]

    def _value(self, v):
        if isinstance(v, (list, tuple)):
            return type(v)(self._value(a) for a in v)
        return self.result(v) if isinstance(v, Pending) else v

    @classmethod
    def _future(cls, v):
        if isinstance(v, (list, tuple)):  # Prefect resolves futures inside collections
            return type(v)(cls._future(a) for a in v)
        if not isinstance(v, Pending):
            return v
        return v.value if v.resolved and v.future is None else v.future

    def result(self, pending: Pending):
        if pending.resolved:
            return pending.value
        future = pending.future
        future.wait()
        state = future.state
        value = future.result()  # raises the task's exception if it failed
        # the task run's own seconds are read from the API at finalize(): the server records a
        # run from its events, a moment after the worker finished it
        self.records.append({"name": pending.name, "cached": state.name == "Cached", "seconds": None,
                             "task_run_id": future.task_run_id})
        pending.value, pending.resolved = value, True
        return value

    def finalize(self, wait: float = 20.0) -> list[dict]:
        """Fill in the seconds of tasks run on Dask (their task runs' run time, 0 for one served
        from cache); returns :attr:`records`. A no-op in sequence.

        A stage submitted but never awaited (a dependency of others only) is awaited here."""
        for pending in self._submitted:
            self.result(pending)
        self._submitted.clear()
        todo = {r["task_run_id"]: r for r in self.records if "task_run_id" in r}
        if not todo:
            return self.records
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
        from prefect.client.schemas.sorting import TaskRunSort

        deadline = time.monotonic() + wait
        with get_client(sync_client=True) as client:
            while todo:
                ids = list(todo)
                for start in range(0, len(ids), 200):
                    chunk = ids[start:start + 200]
                    runs = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=chunk)),
                                                 sort=TaskRunSort.ID_DESC, limit=len(chunk))
                    for run in runs:
                        if run.state is not None and run.state.is_final() and run.id in todo:
                            rec = todo.pop(run.id)
                            rec["seconds"] = round(run.total_run_time.total_seconds(), 3)
                            if run.start_time is not None and run.end_time is not None:
                                rec["metrics"] = {"started_at": run.start_time.timestamp(),
                                                  "ended_at": run.end_time.timestamp()}
                if not todo or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        for r in self.records:
            r.pop("task_run_id", None)
            if r["seconds"] is None:  # never recorded by the server in time: unknown, not zero
                r["seconds"] = float("nan")
        return self.records


def out_of_sample(run: Stages, train_key, folds: int = 4) -> Pending:
    """Submit the K out-of-sample folds as separate cached tasks and their merge (the same
    probabilities as one ``stages.out_of_sample`` task, trained side by side on Dask)."""
    from winnow.tasks import stages

    parts = [run.submit("out-of-sample-fold", stages.out_of_sample_fold, train_key, f, folds) for f in range(folds)]
    return run.submit("out-of-sample", stages.merge_out_of_sample, train_key, parts)


def checkpoint_logits(run: Stages, train_key, n: int) -> Pending:
    """Submit the training set's checkpoint logits in shards of ``stages.LOGIT_SHARD_ROWS`` rows
    (side by side on Dask) and their merge; ``n`` bounds the rows (shards past the end are empty).
    The scorers that read only those logits (loss, margin, aum, ...) then share one computation."""
    from winnow.tasks import stages

    parts = [run.submit("checkpoint-logits", stages.checkpoint_logits_shard, train_key, a, b)
             for a, b in stages.logit_shards(n)]
    return run.submit("checkpoint-logits-merge", stages.merge_checkpoint_logits, train_key, parts)


# ---------------------------------------------------------------- served deployments

#: ``winnow serve --workers N`` / ``--dask ADDRESS`` hand the choice to the flow runs it starts
#: (each a fresh process that imports the flow) through these environment variables
ENV_WORKERS, ENV_DASK = "WINNOW_WORKERS", "WINNOW_DASK"


def runner_from_env(flow_obj):
    """``flow_obj`` with the task runner ``WINNOW_WORKERS`` / ``WINNOW_DASK`` ask for (unchanged
    when neither is set). Applied where a served flow is defined, so its deployment's runs use it."""
    workers, address = os.environ.get(ENV_WORKERS), os.environ.get(ENV_DASK)
    if not workers and not address:
        return flow_obj
    threads = int(os.environ.get("WINNOW_TORCH_THREADS", "1"))
    cls = _runner_class()
    if address:  # checked by `winnow serve` when it started; not again at every import
        runner = cls(address=address, torch_threads=threads)
    else:
        runner = task_runner(workers=int(workers), torch_threads=threads)
    return flow_obj.with_options(task_runner=runner)


def export_runner_choice(args) -> None:
    """For ``winnow serve``: check ``--workers``/``--dask`` now, then pass them to the flow runs."""
    workers, address = getattr(args, "workers", None), getattr(args, "dask", None)
    if workers is None and not address:
        return
    task_runner(workers, address)  # refuses a bad value or an unreachable cluster, in one line
    if address:
        os.environ[ENV_DASK] = check_cluster(address)
    else:
        os.environ[ENV_WORKERS] = str(workers)
