"""End to end on loopback: `prefect server start`, `winnow serve` (the deployments), `winnow watch`
(the event per new file); batches (a Parquet file, a folder of PNGs) dropped into the incoming
folder start `on-arrival` flow runs through Prefect's event trigger. Then the lake, the review
queue, MLflow and the alias are checked."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from helpers import digits_parquet

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEADLINE_S = 420  # for the runs, after the services are up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, probe, timeout, procs=()):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for name, p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode} while waiting for {what}")
        try:
            value = probe()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def rows(lo, hi):
    return lambda cols: {k: v[lo:hi] for k, v in cols.items()}


@pytest.fixture
def services(tmp_path):
    """A Prefect server, the served deployments and the watcher, in a private WINNOW_HOME."""
    home = tmp_path / "home"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "WINNOW_"))}
    env.update(WINNOW_HOME=str(home), PREFECT_HOME=str(home / "prefect"), PREFECT_API_URL=api,
               PREFECT_LOCAL_STORAGE_PATH=str(home / "prefect" / "results"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_RESULTS_PERSIST_BY_DEFAULT="true", MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
               MLFLOW_DISABLE_TELEMETRY="true", TQDM_DISABLE="1", PYTHONUNBUFFERED="1",
               PREFECT_RUNNER_POLL_FREQUENCY="2")  # the runner looks for triggered runs every 2 s
    gate_toml = tmp_path / "gate.toml"
    # canaries measured but thresholds loose: this test is about the plumbing, not the verdict
    gate_toml.write_text("canaries = 6\n[gate]\nmax_noise_rate = 0.5\nmax_flagged_fraction = 0.5\n"
                         "min_canary_recall = 0.3\naccuracy_tolerance = 0.2\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (home / "prefect").mkdir(parents=True)  # the server's sqlite file goes there
    procs = []

    def start(name, *cmd):
        out = open(logs / f"{name}.log", "w")
        p = subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append((name, p))
        return p

    try:
        start("server", str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port))
        wait_for("the Prefect server", lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200, 120, procs)
        start("serve", str(BIN / "winnow"), "serve", "--epochs", "6", "--gate-config", str(gate_toml))

        def deployed():
            r = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
            names = {d["name"] for d in r}
            autos = httpx.post(f"{api}/automations/filter", json={}, timeout=10).json()
            return {"audit", "on-arrival"} <= names and autos

        wait_for("the deployments and their trigger", deployed, 120, procs)
        incoming = home / "incoming"
        start("watch", str(BIN / "winnow"), "watch", "--dir", str(incoming), "--interval", "0.5")
        yield {"api": api, "home": home, "incoming": incoming, "env": env, "procs": procs, "logs": logs}
    finally:
        for _, p in reversed(procs):
            stop(p)


def drop(src: Path, incoming: Path, name: str) -> None:
    """Land a batch the way a producer should: copy beside, then rename into the folder."""
    incoming.mkdir(parents=True, exist_ok=True)
    tmp = incoming / f".{name}.tmp"
    (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp)
    tmp.rename(incoming / name)


def image_folder(dest: Path, lo: int, hi: int) -> Path:
    """Digits [lo, hi) as a folder of PNG files plus labels.csv (the other arrival format)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    dest.mkdir()
    lines = ["file,label,id"]
    for i in range(lo, hi):
        Image.fromarray((d.images[i] * 255 / 16).round().astype("uint8")).save(dest / f"{i:04d}.png")
        lines.append(f"{i:04d}.png,{d.target[i]},u{i}")
    (dest / "labels.csv").write_text("\n".join(lines) + "\n")
    return dest


def test_batches_landing_in_incoming_trigger_on_arrival_runs(services, tmp_path, monkeypatch):
    api, incoming = services["api"], services["incoming"]
    a = digits_parquet(tmp_path / "a.parquet", n=1000, mutate=rows(0, 300))
    b = image_folder(tmp_path / "b", 300, 600)
    t0 = time.monotonic()
    drop(a, incoming, "batch-a.parquet")  # two batches arriving together
    drop(b, incoming, "batch-b")  # a folder of images with labels.csv
    time.sleep(2)
    drop(a, incoming, "batch-a-again.parquet")  # the same content again, under another name

    def arrival_runs():
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        deps = {d["id"]: d["name"] for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
        mine = [r for r in runs if deps.get(r["deployment_id"]) == "on-arrival"]
        done = [r for r in mine if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
        return mine if len(mine) == 3 and len(done) == 3 else None

    try:
        runs = wait_for("three on-arrival flow runs to finish", arrival_runs, DEADLINE_S, services["procs"])
    except AssertionError:
        for f in sorted(services["logs"].glob("*.log")):
            print(f"---- {f.name}\n{f.read_text()[-4000:]}")
        raise
    elapsed = time.monotonic() - t0
    print(f"three arrivals processed in {elapsed:.0f}s")
    assert [r["state_type"] for r in runs] == ["COMPLETED"] * 3, [(r["name"], r["state_name"]) for r in runs]
    paths = sorted(r["parameters"]["path"] for r in runs)
    assert [Path(p).name for p in paths] == ["batch-a-again.parquet", "batch-a.parquet", "batch-b"]

    # what the runs left behind, read from the same WINNOW_HOME and MLflow store
    home = services["home"]
    monkeypatch.setenv("WINNOW_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", services["env"]["MLFLOW_TRACKING_URI"])
    from winnow.tasks import lake, registry

    arrivals = lake.sql("SELECT * FROM arrivals ORDER BY created_at")
    assert len(arrivals) == 2 and set(arrivals["verdict"]) == {"passed"}  # the repeat was processed once
    samples = lake.sql("SELECT batch_id, count(*) AS n FROM samples WHERE dataset = 'incoming' GROUP BY batch_id")
    assert sorted(samples["n"]) == [300, 300]
    queue = lake.sql("SELECT * FROM review_queue")
    assert len(queue) > 0 and set(queue["batch_id"]) <= set(samples["batch_id"])
    assert set(queue["run_id"]) <= {r["id"] for r in runs}  # queue rows name the flow run that flagged them
    from winnow.tasks.tracking import mlflow_module

    client = mlflow_module().MlflowClient()  # pointed at the services' store
    for _, row in arrivals.iterrows():
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.tags["prefect.flow_run_id"] == row["flow_run_id"]
        assert run.data.tags["winnow.gate"] == "passed"
    champion = registry.champion()
    assert champion["version"] == "2" and champion["run_id"] == arrivals.iloc[-1]["mlflow_run_id"]
    assert Path(arrivals.iloc[-1]["report"]).exists()
