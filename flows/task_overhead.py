"""What each task costs Prefect on Dask before it does any work, and the parts winnow removes.

Measured with Prefect 3.8.8 and prefect-dask 0.3.7 on this 2-core machine
(``python benchmarks/dask_task_overhead.py``, 400 tasks that return at once): a task costs 9 ms
of CPU run in the flow's process; submitted through prefect-dask's own ``DaskTaskRunner`` to two
local workers, 49–59 ms in the flow's process and 157–162 ms in a worker. Dask's profiler and
cProfile put nearly all of it in three places, which winnow's runner (:mod:`winnow.flows.scaleout`)
cuts to 17–23 + 20–37 ms (two runs; ``docs/scale/README.md``):

* **The flow's settings, serialised per task and rebuilt per task.** prefect-dask sends every
  task the current ``SettingsContext`` as a plain dict (``SettingsContext.serialize``, 20 ms in
  the flow's process); the worker turns the dict back into a ``Settings`` model, which re-reads
  the environment, ``.env`` files and the profiles file for each of its ~30 nested models (30 ms).
  :class:`LiveSettingsContext` sends the ``Settings`` object itself (pickled, 10 KiB): nothing is
  serialised, and the worker's rebuild validates an instance (70 µs). The trade: Prefect's dict
  form turns paths into strings so that a Windows flow can drive Linux workers; a pickled
  ``Settings`` needs workers on the same kind of OS as the flow.
* **A TLS context per API client.** Every Prefect client loads a CA bundle into a new ``ssl``
  context (44 ms here), and a worker builds two clients per task. Against a server on plain
  ``http://`` (the temporary server winnow starts for a run; most local servers) no certificate is
  ever checked, so :func:`lean_settings` points ``PREFECT_API_SSL_CERT_FILE`` at a one-certificate
  file (0.8 ms to load) for the run. An ``https://`` API keeps its CA file.
* **Dask hashing every submission** (``pure=True``: the task, its parameters and the context
  cloudpickled to name it; the flow process's CPU per task fell from 23 to 17 ms without it). The
  runner submits with ``pure=False``; see its ``submit``.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from prefect.context import SettingsContext

_FIRST_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


class LiveSettingsContext(SettingsContext):
    """A ``SettingsContext`` that a task runner sends to its workers as the objects themselves."""

    def serialize(self, include_secrets: bool = True) -> dict[str, Any]:
        # the SettingsContext fields, unconverted: the worker's SettingsContext(**this) takes the
        # validated Settings instance as it is
        return {"profile": self.profile, "settings": self.settings}


def plain_http_ca_file(home: Path) -> Path | None:
    """A CA file holding one certificate (the first of certifi's bundle), written once under
    ``home``; None where it cannot be written. Only for clients of a plain-http API."""
    target = Path(home) / "plain-http-ca.pem"
    if target.exists():
        return target
    with contextlib.suppress(OSError, ImportError, AttributeError):
        import certifi

        from winnow.tasks.artifacts import atomic_write_bytes

        first = _FIRST_CERT.search(Path(certifi.where()).read_text())
        if first:
            atomic_write_bytes((first.group(0) + "\n").encode(), target)
            return target
    return None


@contextlib.contextmanager
def lean_settings(home: Path):
    """Within this block, the tasks a Dask runner submits carry the flow's settings as objects
    (:class:`LiveSettingsContext`) and, where the API is plain http, a one-certificate CA file.

    A no-op outside a Prefect settings context, and when it is already in effect (a worker
    entering its copy of the runner for each task)."""
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL

    current = SettingsContext.get()
    if current is None or isinstance(current, LiveSettingsContext):
        yield
        return
    settings = current.settings
    url = PREFECT_API_URL.value_from(settings) or ""
    # over plain http the CA file is never read for a check, whoever set it (here the machine's
    # SSL_CERT_FILE does): only its loading costs
    if url.startswith("http://"):
        ca = plain_http_ca_file(home)
        # rebuilding Settings costs 30 ms: not again on a worker, whose settings came with the file
        if ca is not None and PREFECT_API_SSL_CERT_FILE.value_from(settings) != str(ca):
            settings = settings.copy_with_update(updates={PREFECT_API_SSL_CERT_FILE: str(ca)})
    with LiveSettingsContext(profile=current.profile, settings=settings):
        yield
