"""``winnow doctor``: read every lake part, artifact and persisted Prefect result back whole, and
list what is broken (exit 1 when something is)."""
from __future__ import annotations

import sys
from collections import Counter


def cmd_doctor(args) -> int:
    from winnow.tasks.integrity import scan
    from winnow.tasks.settings import paths

    p = paths()
    findings, leftovers = scan(p)
    broken = [f for f in findings if f.problem]
    for f in broken:
        print(f"BROKEN {f.path}: {f.problem}")
    for f in leftovers:
        print(f"leftover {f}: temp file of an interrupted write (nothing reads it; safe to delete)")
    counts = Counter(f.kind for f in findings)
    summary = (f"winnow doctor: {p.home}: checked {counts['lake']} lake parts, {counts['artifact']} artifacts, "
               f"{counts['prefect-result']} Prefect results: {len(broken)} broken")
    if broken:
        print(summary + " (delete them, or rerun the command that made them with --refresh)", file=sys.stderr)
        return 1
    print(summary)
    return 0


def add_commands(sub) -> dict:
    sub.add_parser("doctor", help="check every lake part, artifact and cached result; list what is broken",
                   description="Read every file under WINNOW_HOME back whole: Parquet page checksums, content "
                               "hashes of content-named parts, torch and JSON artifacts, Prefect's persisted "
                               "results. Exit 1 when something is broken.")
    return {"doctor": cmd_doctor}
