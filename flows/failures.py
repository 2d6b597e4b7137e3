"""How the CLI ends when something goes wrong: one refusal path.

- An *expected* failure (bad input or option, a missing or unreadable file, a corrupted cached
  file, a full disk or read-only home) ends with exit code 2; a failed gate with 1. The cause
  is the last line on stderr, and no traceback is shown unless ``--debug`` or ``WINNOW_DEBUG=1``.
- An *unexpected* error keeps its traceback, ends with exit code 3 and says how to report it.
- SIGINT / SIGTERM end with ``128 + signal`` after the run is marked Crashed in Prefect and
  every child process is ended (:mod:`winnow.tasks.lifecycle`).

Prefect logs a task's or flow's exception with its traceback (``exc_info``) through the console
handler of its logging config. :class:`ConsoleFormatter` is the formatter winnow's logging config
(``prefect_logging.yml``, selected by ``PREFECT_LOGGING_SETTINGS_PATH``) gives that handler: it
leaves the traceback out of the terminal for expected failures only. The API handler, and so the
Prefect UI, still gets the run's logs and its Failed state with the message.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import signal
import traceback

from prefect.logging.formatters import PrefectFormatter

EXIT_OK, EXIT_GATE, EXIT_REFUSED, EXIT_BUG = 0, 1, 2, 3

# Faults of the machine rather than of winnow: reported as one line naming the path.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}

REPORT_HINT = ("this is a bug in winnow: please report it (the command, this traceback and "
               "`pip freeze` output) to the project's issue tracker")


def debug_enabled() -> bool:
    return os.environ.get("WINNOW_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _is_gate_failure(exc: BaseException) -> bool:
    return any(c.__name__ == "GateFailed" for c in type(exc).__mro__)


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an expected failure, or None when ``exc`` is unexpected (a bug)."""
    if _is_gate_failure(exc):
        return EXIT_GATE
    if isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return EXIT_REFUSED
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return EXIT_REFUSED
    return None


def interrupt_signal(exc: BaseException) -> int | None:
    """The signal number behind an interruption (Ctrl-C, SIGTERM, Prefect's TerminationSignal), else None."""
    if isinstance(exc, KeyboardInterrupt):
        return getattr(exc, "signum", signal.SIGINT)
    if type(exc).__name__ == "TerminationSignal":  # prefect.exceptions.TerminationSignal
        return int(getattr(exc, "signal", signal.SIGTERM))
    return None


def cause(exc: BaseException) -> str:
    """One line that names what is wrong (multi-line messages are joined with '; ')."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            text += " (nothing half-written was kept; free space and rerun: finished stages come from cache)"
        elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            text += " (point WINNOW_HOME at a writable folder)"
        return text
    # one line per message line, without the "  - " bullets of multi-line messages (ValidationFailed)
    lines = [re.sub(r"^\s*-\s+", "", ln).strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln]
    text = "".join(f"{ln}{' ' if ln.endswith(':') else '; '}" for ln in lines[:-1]) + (lines[-1] if lines else "")
    if isinstance(exc, KeyError) or not lines:
        text = f"{exc.__class__.__name__}: {text}"
    return text


class ConsoleFormatter(PrefectFormatter):
    """Prefect's console formatter, minus the traceback of an expected failure (unless debugging)."""

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not debug_enabled() and exit_code(exc) is not None:
            quiet = logging.makeLogRecord(record.__dict__)
            quiet.exc_info, quiet.exc_text, quiet.stack_info = None, None, None
            return super().format(quiet)
        return super().format(record)


def report(command: str, exc: BaseException, debug: bool, stream) -> int:
    """Print how ``command`` ended because of ``exc`` (cause last) and return the exit code."""
    signum = interrupt_signal(exc)
    if signum is not None:
        name = signal.Signals(signum).name
        print(f"winnow {command}: stopped by {name}: the flow run (if one had started) is marked Crashed in "
              f"Prefect, child processes are ended and no partial lake part was written; rerun the same "
              f"command to resume from the last finished stage", file=stream)
        return 128 + signum
    code = exit_code(exc)
    if code is None:
        traceback.print_exception(exc, file=stream)
        print(f"winnow {command}: internal error: {exc.__class__.__name__}: {cause(exc)} — {REPORT_HINT}",
              file=stream)
        return EXIT_BUG
    if debug:
        traceback.print_exception(exc, file=stream)
    label = "gate failed" if code == EXIT_GATE else "error"
    print(f"winnow {command}: {label}: {cause(exc)}", file=stream)
    return code
