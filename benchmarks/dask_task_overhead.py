"""What a task costs Prefect before it does any work: in the flow's process, on Dask with
prefect-dask's own runner, and on Dask with winnow's (``flows/task_overhead.py``).

    python benchmarks/dask_task_overhead.py [--tasks 400] [--workers 2]

Each mode runs a flow of ``--tasks`` tasks that return at once, and the same flow with one task
(the fixed cost: server, cluster, worker imports); the difference divided by the extra tasks is the
cost per task: wall time, and CPU seconds of the flow's process and of its child processes (Dask's
nannies and workers, read from ``RUSAGE_CHILDREN`` once they are reaped). Each run is a fresh
Python process and a fresh ``WINNOW_HOME``. Not a test: about 3 minutes on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODES = ("in-process", "prefect-dask", "winnow")


def _child(mode: str, n: int, workers: int) -> dict:
    """Run in a fresh process: one flow of ``n`` empty tasks in ``mode``; its costs."""
    import resource

    from prefect import flow, task

    from winnow.flows.scaleout import run_flow, task_runner

    @task
    def empty(i: int) -> int:
        return i

    @flow
    def submitted(n: int) -> int:
        return sum(f.result() for f in [empty.submit(i) for i in range(n)])

    @flow
    def called(n: int) -> int:
        return sum(empty(i) for i in range(n))

    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "in-process":
        run_flow(called, None, n=n)
    else:
        runner = task_runner(workers=workers)
        if mode == "prefect-dask":  # the reference: prefect-dask's runner as it comes
            from prefect_dask import DaskTaskRunner

            runner = DaskTaskRunner(cluster_class=runner.cluster_class, cluster_kwargs=runner.cluster_kwargs)
        run_flow(submitted, runner, n=n)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": time.perf_counter() - t0, "cpu_flow_s": time.process_time() - c0,
            "cpu_children_s": children.ru_utime + children.ru_stime}


def _run(mode: str, n: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="winnow-overhead-") as home:
        env = {**os.environ, "WINNOW_HOME": home}
        env.pop("PREFECT_API_URL", None)
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(n), str(workers)],
                             capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"{mode} with {n} tasks failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, n, workers = args.child
        print(json.dumps(_child(mode, int(n), int(workers))))
        return
    if args.tasks < 2:
        raise SystemExit("--tasks must be at least 2")
    print(f"{args.tasks} empty tasks, {args.workers} Dask workers, {os.cpu_count()} CPUs, "
          f"load {open('/proc/loadavg').read().split()[0]}")
    print(f"{'mode':14} {'fixed wall s':>12} {'ms wall/task':>13} {'ms CPU/task flow':>17} {'ms CPU/task workers':>20}")
    for mode in MODES:
        one, many = _run(mode, 1, args.workers), _run(mode, args.tasks, args.workers)
        per = {k: 1000 * (many[k] - one[k]) / (args.tasks - 1) for k in one}
        print(f"{mode:14} {one['wall_s']:12.1f} {per['wall_s']:13.1f} {per['cpu_flow_s']:17.1f} "
              f"{per['cpu_children_s']:20.1f}", flush=True)


if __name__ == "__main__":
    main()
