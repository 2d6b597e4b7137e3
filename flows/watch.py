"""The watcher: one Prefect event per batch that lands in the incoming folder.

    data/incoming/<batch>  --(look, look again: unchanged?)-->  event `winnow.batch.arrived`
                           --(the on-arrival deployment's trigger)-->  on-arrival flow run

A separate, long-running process (`winnow watch`); it only announces, the flow does the work.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from winnow.tasks import arrivals, artifacts
from winnow.tasks.settings import paths

ARRIVAL_EVENT = "winnow.batch.arrived"


def _signature(p: Path) -> tuple:
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return tuple((str(f.relative_to(p)) if p.is_dir() else f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def scan(directory: Path, previous: dict[str, tuple]) -> tuple[dict[str, tuple], list[Path]]:
    """One look at the folder: returns the signatures now, and the arrivals whose signature is
    the same as one look ago (a file still being copied changes between looks)."""
    now, stable = {}, []
    for p in sorted(directory.iterdir()) if directory.exists() else []:
        if not arrivals.is_arrival(p):
            continue
        try:
            sig = _signature(p)
        except FileNotFoundError:  # moved away between the listing and the stat
            continue
        now[str(p.resolve())] = sig
        if previous.get(str(p.resolve())) == sig:
            stable.append(p.resolve())
    return now, stable


def emit_arrival(path: Path) -> None:
    """One Prefect event per arrival; the on-arrival deployment's trigger turns it into a run."""
    from prefect.events import emit_event

    emit_event(event=ARRIVAL_EVENT, resource={"prefect.resource.id": str(path), "prefect.resource.name": path.name})


def watch(directory: Path, interval: float = 1.0, once: bool = False) -> None:
    """Emit an event for every new (or changed) arrival in ``directory``; runs until interrupted.

    What was announced is remembered in ``<artifacts>/watch-seen.json`` (path -> signature), so a
    restarted watcher does not announce the same file again; a file copied in twice under a new
    signature is announced again, and the flow recognises its content.
    """
    from prefect.events.worker import EventsWorker

    directory.mkdir(parents=True, exist_ok=True)
    ledger = paths().artifacts / "watch-seen.json"
    seen = json.loads(ledger.read_text()) if ledger.exists() else {}
    previous: dict[str, tuple] = {}
    print(f"watching {directory} (every {interval:g}s); events: {ARRIVAL_EVENT}", flush=True)
    while True:
        current, stable = scan(directory, previous)
        fresh = [p for p in stable if seen.get(str(p)) != [list(s) for s in current[str(p)]]]
        for p in fresh:
            emit_arrival(p)
            seen[str(p)] = [list(s) for s in current[str(p)]]
            print(f"arrived: {p}", flush=True)
        if fresh:
            EventsWorker.drain_all(at_exit=False)  # deliver now, not at exit
            artifacts.atomic_write_bytes(json.dumps(seen).encode(), ledger)
        previous = current
        if once and not fresh and stable == [Path(p) for p in current]:
            return
        time.sleep(interval)


def add_commands(sub) -> dict:
    w = sub.add_parser("watch", help="emit a Prefect event for each batch landing in data/incoming/",
                       description="Watch the incoming folder; emit `winnow.batch.arrived` once per new file.")
    w.add_argument("--dir", help="folder to watch (default: $WINNOW_HOME/incoming)")
    w.add_argument("--interval", type=float, default=1.0, help="seconds between looks (default 1)")
    w.add_argument("--once", action="store_true", help="announce what is there now, then exit")
    return {"watch": cmd_watch}


def cmd_watch(args) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        print("winnow watch: error: set PREFECT_API_URL to the server the deployments are served on", file=sys.stderr)
        return 2
    try:
        watch(Path(args.dir) if args.dir else paths().incoming, args.interval, args.once)
    except KeyboardInterrupt:
        pass
    return 0
