"""Signals and faults, through the real command in subprocesses with the real services:
SIGTERM mid-training, kill -9 then rerun, two runs at once on one home, a read-only home,
a full disk, a truncated artifact and lake part (found by ``winnow doctor``, never used)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import prefect.main  # noqa: F401 - sets up Prefect's logging before any test captures stderr
import pytest

from winnow.tasks.lifecycle import descendants

pytestmark = pytest.mark.slow

# A small, complete audit: 600 digits, 3 epochs, no out-of-sample folds (k given).
RUN = ["run", "--limit", "600", "--epochs", "3", "--scorers", "loss,random", "--prune-k", "40", "--format", "json"]
CLI = [sys.executable, "-m", "winnow.flows.cli"]


def cli_env(home: Path, api_url: str | None = None) -> dict:
    """The environment of a user's shell: nothing of the test session's Prefect/MLflow settings;
    each home keeps its own Prefect results, MLflow store and (without ``api_url``) server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "WINNOW_"))}
    env.update(WINNOW_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", TQDM_DISABLE="1")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@pytest.fixture(scope="module")
def api_url(prefect_server) -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def figures(stdout: str) -> list[dict]:
    """The printed rows, minus what differs between any two runs (seconds, the MLflow run id)."""
    return [{k: v for k, v in row.items() if k not in ("score s", "mlflow_run_id")} for row in json.loads(stdout)]


def wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until a line of ``path`` matches the regular expression ``pattern``."""
    text = pattern
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and re.search(pattern, path.read_text(errors="replace")):
            return
        assert proc.poll() is None, f"run ended before {text!r}: {path.read_text()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} did not appear in {timeout}s")


def test_sigterm_mid_training_ends_the_run_and_every_child(tmp_path):
    """Own temporary Prefect server (a child uvicorn process), SIGTERM during training: the flow
    run ends Crashed, every child process is gone within seconds, nothing half-written."""
    home, err = tmp_path / "home", tmp_path / "err.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen([*CLI, "run", "--epochs", "400", "--scorers", "loss", "--prune-k", "10"],
                                env=cli_env(home), stdout=subprocess.DEVNULL, stderr=fh, cwd=tmp_path)
    try:
        wait_for(err, r"epoch 2/400", proc)
        children = descendants(proc.pid)
        assert children, "the temporary Prefect server should be a child of the CLI"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.read_text()
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert "stopped by SIGTERM" in text.strip().splitlines()[-1]
    assert "Finished in state Crashed" in text and "Traceback" not in text
    time.sleep(0.5)
    alive = [p for p in children if Path(f"/proc/{p}").exists()]
    assert not alive, f"processes of the run still alive: {alive}"
    assert seconds < 15, f"took {seconds:.1f}s to stop"
    with sqlite3.connect(home / "prefect" / "prefect.db") as db:
        assert db.execute("SELECT state_type FROM flow_run").fetchall() == [("CRASHED",)]
    assert not list(home.rglob("*.tmp"))
    assert subprocess.run([*CLI, "doctor"], env=cli_env(home), capture_output=True, text=True).returncode == 0


@pytest.fixture(scope="module")
def concurrent_pair(tmp_path_factory, api_url):
    """Two different runs started at the same moment on one home, and, alongside, a third run of
    seed 0 on another home killed with SIGKILL once its training finished."""
    shared = tmp_path_factory.mktemp("shared-home")
    killed_home = tmp_path_factory.mktemp("killed-home")
    runs, files = {}, {}
    for seed in (0, 1):
        files[seed] = (open(shared / f"out-{seed}.json", "w"), open(shared / f"err-{seed}.txt", "w"))
        runs[seed] = subprocess.Popen([*CLI, *RUN, "--seed", str(seed)], env=cli_env(shared, api_url),
                                      stdout=files[seed][0], stderr=files[seed][1], cwd=shared)
    err = killed_home / "err.txt"
    with open(err, "w") as fh:
        victim = subprocess.Popen([*CLI, *RUN, "--seed", "0"], env=cli_env(killed_home, api_url),
                                  stdout=subprocess.DEVNULL, stderr=fh, cwd=killed_home)
    try:
        # once the train task's result is persisted (its Completed state comes after that)
        wait_for(err, r"Task run 'train-\w+' - Finished in state Completed", victim, timeout=600)
        victim.kill()  # SIGKILL: no clean-up runs at all
        victim.wait()
        for p in runs.values():
            p.wait(timeout=900)
    finally:
        for p in (*runs.values(), victim):
            if p.poll() is None:
                p.kill()
        for handles in files.values():
            for fh in handles:
                fh.close()
    results = {seed: (runs[seed].returncode, (shared / f"out-{seed}.json").read_text(),
                      (shared / f"err-{seed}.txt").read_text()) for seed in runs}
    return {"shared": shared, "killed": killed_home, "api_url": api_url, "results": results}


def test_two_runs_at_once_on_one_home_both_complete_with_a_consistent_lake(concurrent_pair):
    from winnow.tasks import lake

    for seed, (code, out, err) in concurrent_pair["results"].items():
        assert code == 0, f"seed {seed}: {err[-3000:]}"
    shared = concurrent_pair["shared"]
    doctor = subprocess.run([*CLI, "doctor"], env=cli_env(shared), capture_output=True, text=True)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert len(list((shared / "lake" / "samples").glob("*.parquet"))) == 1  # one batch, committed once
    seeds = lake.sql("SELECT DISTINCT seed FROM metrics ORDER BY seed", lake=shared / "lake")["seed"].tolist()
    assert seeds == [0, 1]
    runs = lake.sql("SELECT count(*) AS n FROM runs", lake=shared / "lake")["n"].item()
    assert runs == 2


def test_kill_9_then_rerun_resumes_from_cache_with_identical_figures(concurrent_pair):
    home = concurrent_pair["killed"]
    assert not list((home / "lake").rglob("*.tmp"))
    rerun = subprocess.run([*CLI, *RUN, "--seed", "0"], env=cli_env(home, concurrent_pair["api_url"]),
                           capture_output=True, text=True, timeout=900, cwd=home)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert re.search(r"Task run 'train-\w+' - Finished in state Cached", rerun.stderr), rerun.stderr[-3000:]
    reference = concurrent_pair["results"][0][1]
    assert figures(rerun.stdout) == figures(reference)


def test_truncated_artifact_and_lake_part_are_found_and_never_used(concurrent_pair):
    """Runs last on the shared home (its cache keys cover the home's path, so a copy would just recompute)."""
    home = concurrent_pair["shared"]
    checkpoint = next((home / "artifacts" / "checkpoints").glob("*.pt"))
    part = next((home / "lake" / "samples").glob("*.parquet"))
    for f in (checkpoint, part):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    doctor = subprocess.run([*CLI, "doctor"], env=cli_env(home), capture_output=True, text=True)
    assert doctor.returncode == 1
    broken = [ln for ln in doctor.stdout.splitlines() if ln.startswith("BROKEN")]
    assert sorted(ln.split(":")[0].split()[1] for ln in broken) == sorted([str(checkpoint), str(part)])
    assert "2 broken" in doctor.stderr.strip().splitlines()[-1]

    # The same run again: its cached stages point at the truncated checkpoint -> refused, naming it.
    # (The samples part is rewritten from the staged batch on the way: content-named parts repair.)
    again = subprocess.run([*CLI, *RUN, "--seed", "0"], env=cli_env(home, concurrent_pair["api_url"]),
                           capture_output=True, text=True, timeout=900, cwd=home)
    last = again.stderr.strip().splitlines()[-1]
    assert again.returncode == 2, again.stderr[-3000:]
    assert str(checkpoint) in last and "corrupted" in last and "--refresh" in last
    assert "Traceback" not in again.stderr

    refreshed = subprocess.run([*CLI, *RUN, "--seed", "0", "--refresh"], env=cli_env(home, concurrent_pair["api_url"]),
                               capture_output=True, text=True, timeout=900, cwd=home)
    assert refreshed.returncode == 0, refreshed.stderr[-3000:]
    assert figures(refreshed.stdout) == figures(concurrent_pair["results"][0][1])
    assert subprocess.run([*CLI, "doctor"], env=cli_env(home), capture_output=True).returncode == 0


def _in_mount_namespace(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600)


def _can_mount() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs a private mount namespace (unshare -m, root)")


@needs_mount
def test_read_only_home_is_refused_with_one_line_naming_it(tmp_path, api_url):
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(home, api_url)
    script = (f"mount --bind {home} {home} && mount -o remount,bind,ro {home} && "
              f"{sys.executable} -m winnow.flows.cli run > /dev/null 2> {tmp_path}/run.err; echo $? > {tmp_path}/run.rc; "
              f"{sys.executable} -m winnow.flows.cli doctor > /dev/null 2>&1; echo $? > {tmp_path}/doctor.rc")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    err = (tmp_path / "run.err").read_text()
    assert (tmp_path / "run.rc").read_text().strip() == "2", err
    assert err.strip().splitlines()[-1] == (f"winnow run: error: {home}: cannot write here (Read-only file system) "
                                            f"(point WINNOW_HOME at a writable folder)")
    assert "Traceback" not in err
    assert (tmp_path / "doctor.rc").read_text().strip() == "0"  # reading still works
    assert not any(home.iterdir())


@needs_mount
def test_full_disk_is_one_line_naming_the_path_and_leaves_nothing_half_written(tmp_path, api_url):
    """WINNOW_HOME on a 1 MiB tmpfs with ~24 KiB free: the staged batch (digits, ~100 KiB) cannot be written."""
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(home, api_url)
    env["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp_path / "results")  # only winnow's own files on the small disk
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = (f"mount -t tmpfs -o size=1m tmpfs {home} && head -c {1024 * 1000} /dev/zero > {home}/filler && "
              f"{sys.executable} -m winnow.flows.cli run --epochs 1 --scorers loss --prune-k 5 "
              f"> /dev/null 2> {tmp_path}/run.err; echo $? > {tmp_path}/run.rc; "
              f"find {home} -name '*.tmp' > {tmp_path}/leftovers; find {home}/lake -name '*.parquet' "
              f"> {tmp_path}/parts 2>/dev/null; true")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    err = (tmp_path / "run.err").read_text()
    last = err.strip().splitlines()[-1]
    assert (tmp_path / "run.rc").read_text().strip() == "2", err[-3000:]
    assert last.startswith(f"winnow run: error: {home}/") and "No space left on device" in last, last
    assert "Traceback" not in err
    assert (tmp_path / "leftovers").read_text() == "" and (tmp_path / "parts").read_text() == ""
