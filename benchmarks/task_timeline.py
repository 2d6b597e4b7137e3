"""How many tasks ran at once during a flow run: where a Dask run waits.

    python benchmarks/task_timeline.py WINNOW_HOME

Reads the task runs' start and end times from the Prefect database a run's temporary server left
in ``WINNOW_HOME/prefect/prefect.db`` (the first flow run there) and prints: the flow's length,
when its first task started and how long before the flow's end its last task ended, the share of
the flow with 0, 1, 2 ... tasks running, the gaps with no task longer than 5 s, and the task
seconds per task name.
"""
from __future__ import annotations

import collections
import datetime as dt
import sqlite3
import sys
from pathlib import Path


def _ts(text: str | None) -> float | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def timeline(home: Path) -> str:
    db = Path(home) / "prefect" / "prefect.db"
    if not db.exists():
        raise ValueError(f"{db}: no Prefect database (give the WINNOW_HOME a run used)")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    first = con.execute("SELECT start_time, end_time FROM flow_run ORDER BY created LIMIT 1").fetchone()
    rows = [(n, _ts(a), _ts(b)) for n, a, b in
            con.execute("SELECT name, start_time, end_time FROM task_run WHERE start_time IS NOT NULL")]
    rows = [r for r in rows if r[2] is not None]
    if first is None or not rows:
        raise ValueError(f"{db}: no finished flow run with task runs")
    f0 = _ts(first[0])
    t1 = max(r[2] for r in rows)
    f1 = _ts(first[1]) or t1
    events = sorted([(a, 1) for _, a, _ in rows] + [(b, -1) for _, _, b in rows])
    busy: collections.Counter = collections.Counter()
    gaps, running, last = [], 0, f0
    for t, step in events:
        busy[running] += t - last
        if running == 0 and t - last > 5:
            gaps.append((round(last - f0), round(t - last)))
        running += step
        last = t
    busy[0] += f1 - last
    lines = [f"flow {f1 - f0:.0f} s; first task at +{min(r[1] for r in rows) - f0:.0f} s; last task ends "
             f"{f1 - t1:.0f} s before the flow; {len(rows)} task runs"]
    lines += [f"  {k} running: {busy[k]:.0f} s ({busy[k] / (f1 - f0):.0%})" for k in sorted(busy)]
    lines.append(f"  gaps with no task > 5 s (start, length): {gaps[:20]}")
    by: dict[str, float] = collections.defaultdict(float)
    for name, a, b in rows:
        by[name.rsplit("-", 1)[0]] += b - a
    lines.append("  task seconds by name: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                         sorted(by.items(), key=lambda kv: -kv[1])[:15]))
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.split("\n\n")[1].strip())
    print(timeline(Path(sys.argv[1])))
