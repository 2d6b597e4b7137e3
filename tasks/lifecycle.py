"""Stopping cleanly: the child processes and resources a winnow process started, ended on exit
or on SIGINT/SIGTERM.

Whatever starts something that must not outlive the CLI registers it here:

- :func:`on_shutdown` takes a callable (a Dask ``LocalCluster.close``, a temporary server's
  ``stop``); hooks run last-registered first;
- :func:`track` takes a ``subprocess.Popen`` (or a pid) started by this process.

:func:`shutdown` runs the hooks, then ends every tracked process and every remaining descendant
of this process (data-loader workers, a Prefect temporary server, Dask workers), SIGTERM first
and SIGKILL after ``grace`` seconds. The CLI calls it on every exit path; it is idempotent.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

_hooks: list[tuple[str, Callable[[], object]]] = []
_tracked: set[int] = set()
_lock = threading.Lock()


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which (exit code ``128 + signum``)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


def on_shutdown(hook: Callable[[], object], name: str | None = None) -> Callable[[], object]:
    """Register ``hook`` (no arguments) to run at :func:`shutdown`; returns it (usable as a decorator)."""
    if not callable(hook):
        raise ValueError(f"on_shutdown: {hook!r} is not callable")
    with _lock:
        _hooks.append((name or getattr(hook, "__qualname__", repr(hook)), hook))
    return hook


def forget(hook: Callable[[], object]) -> None:
    """Unregister a hook that has already done its work (e.g. a cluster closed normally)."""
    with _lock:
        _hooks[:] = [(n, h) for n, h in _hooks if h is not hook]


def track(process) -> None:
    """Remember a child process (``Popen`` or pid) to end at :func:`shutdown`."""
    pid = process if isinstance(process, int) else getattr(process, "pid", None)
    if not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"track: {process!r} has no valid pid")
    with _lock:
        _tracked.add(pid)


def descendants(pid: int | None = None) -> list[int]:
    """Pids of every live descendant of ``pid`` (default: this process), read from /proc.

    Returns [] where /proc is not available (then only tracked processes are ended).
    """
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        # the command name (field 2) may hold spaces and parentheses: parse after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone: reap it
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:  # not our child: /proc says whether it is a zombie
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
            return state[state.rfind(")") + 2:].split()[0] != "Z"
        except (OSError, IndexError):
            return False


def _signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def end_processes(pids, grace: float = 3.0) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, SIGKILL what remains; returns the pids that had to be killed."""
    pids = [p for p in dict.fromkeys(pids) if p != os.getpid()]
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    stubborn = [p for p in pids if _alive(p)]
    _signal_all(stubborn, signal.SIGKILL)
    for p in stubborn:
        while _alive(p) and time.monotonic() < deadline + 2.0:
            time.sleep(0.02)
    return stubborn


def shutdown(grace: float = 3.0, spare: set[int] | frozenset[int] = frozenset()) -> list[str]:
    """Run the shutdown hooks (last registered first), then end tracked and descendant processes.

    ``spare``: pids to leave alone (processes that were already running when the caller began,
    e.g. a test harness's server when the CLI runs in-process). Returns one line per hook that
    failed (a shutdown never raises: it runs on the way out).
    """
    with _lock:
        hooks, _hooks[:] = list(reversed(_hooks)), []
        tracked = set(_tracked)
        _tracked.clear()
    problems = []
    for name, hook in hooks:
        try:
            hook()
        except Exception as exc:  # keep going: the processes must still be ended
            problems.append(f"shutdown hook {name}: {exc.__class__.__name__}: {exc}")
    end_processes([p for p in (*tracked, *descendants()) if p not in spare], grace)
    return problems


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` in the main thread, so ``finally`` blocks,
    Prefect's crash handling and :func:`shutdown` run instead of the process vanishing.
    (Inside a flow run Prefect installs its own SIGTERM bridge, which raises its
    ``TerminationSignal`` and marks the run Crashed; ours is back in place after it.)"""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)


def ignore_signals() -> None:
    """While shutting down, a second Ctrl-C or SIGTERM must not cut the clean-up short."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
