"""The pieces under the fault tests: ending a process tree, detecting damaged files, winnow doctor."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from winnow.flows.cli import main
from winnow.tasks import artifacts, batches, lake, lifecycle
from winnow.tasks.data.sources import load_digits


def test_shutdown_runs_hooks_and_ends_a_whole_process_tree():
    # a child that starts a grandchild, both sleeping: the shape of a server or a worker pool
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"])
    deadline = time.monotonic() + 30
    while len(lifecycle.descendants(child.pid)) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = [child.pid, *lifecycle.descendants(child.pid)]
    assert len(tree) == 2
    ran = []
    lifecycle.on_shutdown(lambda: ran.append("cluster closed"), "a Dask cluster")
    lifecycle.track(child)
    spared = set(lifecycle.descendants()) - set(tree)
    t0 = time.monotonic()
    assert lifecycle.shutdown(grace=3.0, spare=spared) == []
    assert time.monotonic() - t0 < 6
    assert ran == ["cluster closed"]
    child.wait(timeout=5)
    time.sleep(0.2)
    assert not [p for p in tree if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[-1][:3]]


def test_a_failing_hook_is_reported_and_does_not_stop_the_rest():
    lifecycle.on_shutdown(lambda: (_ for _ in ()).throw(RuntimeError("port busy")), "bad hook")
    ran = []
    lifecycle.on_shutdown(lambda: ran.append(1), "good hook")
    problems = lifecycle.shutdown(grace=0.1, spare=set(lifecycle.descendants()))
    assert ran == [1] and problems == ["shutdown hook bad hook: RuntimeError: port busy"]
    with pytest.raises(ValueError, match="not callable"):
        lifecycle.on_shutdown("close")


def test_truncated_and_bit_flipped_parquet_are_refused_naming_the_file(tmp_path):
    table = pa.table({"x": list(range(50_000)), "y": [float(i) / 7 for i in range(50_000)]})
    good = lake.atomic_write_parquet(table, tmp_path / "part.parquet")
    assert lake.read_parquet(good).equals(table)
    blob = good.read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(blob[: len(blob) // 2])
    flipped = tmp_path / "flipped.parquet"
    middle = len(blob) // 3  # inside a data page, far from the footer
    flipped.write_bytes(blob[:middle] + bytes([blob[middle] ^ 0x10]) + blob[middle + 1:])
    for bad in (truncated, flipped):
        with pytest.raises(lake.CorruptFile, match=f"^{bad}: corrupted .*--refresh"):
            lake.read_parquet(bad)
    assert not lake.is_readable(truncated)


def test_doctor_lists_what_is_broken(fresh_home, capsys):
    batch_id = batches.stage(load_digits(limit=100))
    part = batches.commit(batch_id)
    lake.write("metrics", pd.DataFrame({"run_id": ["r"], "name": ["auroc"], "value": [0.9]}), part="r")
    artifacts.save_json("train", "k1", {"test_accuracy": 0.9})
    artifacts.save_torch("checkpoints", "k1", [{"epoch": 1}])
    assert main(["doctor"]) == 0
    assert "0 broken" in capsys.readouterr().out

    renamed = part.with_name("0123456789abcdef.parquet")  # a part that no longer hashes to its name
    part.rename(renamed)
    pt = artifacts.path("checkpoints", "k1", ".pt")
    pt.write_bytes(pt.read_bytes()[:40])
    artifacts.path("train", "k1", ".json").write_text('{"test_accuracy": 0.')
    (part.parent / ".x.parquet.tmp").write_bytes(b"half")
    assert main(["doctor"]) == 1
    captured = capsys.readouterr()
    broken = sorted(ln.split(":")[0][len("BROKEN "):] for ln in captured.out.splitlines() if ln.startswith("BROKEN"))
    assert broken == sorted([str(renamed), str(pt), str(artifacts.path("train", "k1", ".json"))])
    assert f"content hash {batch_id} does not match its name 0123456789abcdef" in captured.out
    assert "leftover" in captured.out and ".x.parquet.tmp" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith("winnow doctor: ") and "3 broken" in captured.err
    with pytest.raises(lake.CorruptFile, match=str(pt)):
        artifacts.load_torch("checkpoints", "k1")


def test_a_truncated_samples_part_is_rewritten_from_staging(fresh_home):
    batch_id = batches.stage(load_digits(limit=100))
    part = batches.commit(batch_id)
    whole = part.read_bytes()
    part.write_bytes(whole[:100])
    with pytest.raises(lake.CorruptFile):
        batches.load_committed(batch_id)
    batches.commit(batch_id)
    assert batches.load_committed(batch_id).content_hash() == batch_id
