"""Scale-out: the benchmark flow on a real local Dask cluster (worker processes) gives the
sequential run's figures; the CLI refuses a Dask address nobody answers; streaming rows give
the in-memory result."""
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from winnow.tasks.models.rows import Rows

# digits, two seeds, two cheap scorers + a peer: every stage kind of a cell, in seconds
TINY = {"datasets": ["digits"], "noises": ["symmetric"], "rates": [0.2], "seeds": [0, 1],
        "scorers": ["loss", "aum"], "peers": [], "limits": {"digits": 500},
        "epochs": {"digits": 3}, "prune_at": ["rate"], "relabel_at": ["rate"]}
FIGURES = ["auroc", "ap", "precision_at_k", "recall_at_k", "acc_noisy", "acc_clean", "acc_prune_rate",
           "acc_relabel_rate", "k_rate", "k_cl", "train_key"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_benchmark_on_local_dask_workers_equals_sequential(prefect_server, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from winnow.flows.benchmark import benchmark
    from winnow.flows.scaleout import _WORKER_PIDS, run_flow, task_runner

    monkeypatch.setenv("WINNOW_HOME", str(tmp_path / "sequential"))
    sequential = benchmark(grid=TINY, title="tiny")
    # a fresh home and no cache: every task computes again, this time in the workers
    monkeypatch.setenv("WINNOW_HOME", str(tmp_path / "dask"))
    runner = task_runner(workers=2)
    pids: list[int] = []
    original = type(runner).client.fget

    def spy(self):  # the pids of the worker processes, to check they are processes and end
        client = original(self)
        pids.extend(w.pid for w in self._cluster.workers.values())
        return client

    monkeypatch.setattr(type(runner), "client", property(spy))
    with temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True}):
        parallel = run_flow(benchmark, runner, grid=TINY, title="tiny")
    assert len(set(pids)) == 2 and all(p != __import__("os").getpid() for p in pids)
    assert not set(pids) & _WORKER_PIDS  # ended with the flow run, and unregistered

    key = ["scorer", "seed"]
    a = sequential.rows.sort_values(key).reset_index(drop=True)
    b = parallel.rows.sort_values(key).reset_index(drop=True)
    assert len(a) == len(b) == 2 * 4  # loss, aum, random, oracle-rank per seed
    pd.testing.assert_frame_equal(a[key + FIGURES], b[key + FIGURES])
    # every task ran (nothing served from cache) and on Dask the per-stage records are there
    assert not any(r["cached"] for r in parallel.stages if r["name"] != "publish")
    assert {"train", "out-of-sample", "score-aum", "retrain-loss", "relabel-loss"} <= {r["name"] for r in parallel.stages}


def test_cli_refuses_an_unreachable_dask_address():
    port = _free_port()  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "winnow.flows.cli", "benchmark", "--quick", "--dask",
                          f"tcp://127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "no Dask scheduler reachable" in lines[0]
    out = subprocess.run([sys.executable, "-m", "winnow.flows.cli", "run", "--dask", "nowhere:1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_workers_and_dask_exclude_each_other():
    from winnow.flows.scaleout import task_runner

    with pytest.raises(ValueError, match="exclude each other"):
        task_runner(workers=2, address="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="positive"):
        task_runner(workers=0)
    assert task_runner() is None


def test_local_workers_keep_glibcs_dynamic_mmap_threshold():
    """Dask's nanny would give its workers MALLOC_TRIM_THRESHOLD_, which made every training
    step map and unmap its buffers (10x the system time); winnow's local clusters drop it."""
    from distributed.nanny import _get_env_variables

    from winnow.flows.scaleout import task_runner

    task_runner(workers=2)
    env = _get_env_variables("distributed.nanny.pre-spawn-environ")
    assert "MALLOC_TRIM_THRESHOLD_" not in env and env.get("OMP_NUM_THREADS") == "1"


def test_the_served_audit_flow_takes_its_runner_from_the_environment(tmp_path):
    """``winnow serve --workers N`` exports WINNOW_WORKERS; a deployment's flow run imports the
    audit flow in a fresh process, which must then run its tasks on Dask."""
    code = ("from winnow.flows.audit import audit; from winnow.flows.on_arrival import on_arrival; "
            "print(type(audit.task_runner).__name__, type(on_arrival.task_runner).__name__)")
    env = {**__import__("os").environ, "WINNOW_WORKERS": "2", "WINNOW_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.stdout.split() == ["WinnowDaskTaskRunner", "WinnowDaskTaskRunner"], out.stderr[-2000:]
    env.pop("WINNOW_WORKERS")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert "WinnowDaskTaskRunner" not in out.stdout, out.stderr[-2000:]


# ---------------------------------------------------------------- streaming rows


def test_training_from_a_memory_mapped_file_equals_training_in_memory(fresh_home):
    from winnow.tasks import arrays
    from winnow.tasks.models.nets import build_model
    from winnow.tasks.models.training import TrainConfig, predict_logits, train_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    arrays.write_npy("t", x.shape, np.float32, [x[:100], x[100:]])
    rows = arrays.open_rows("t")
    assert not rows.in_memory and len(rows) == 300
    factory = lambda: build_model("mlp", (16,), 2)  # noqa: E731
    cfg = TrainConfig(epochs=2, batch_size=32)
    cpu = torch.device("cpu")
    mapped = train_model(factory, rows, y, cfg, device=cpu)
    memory = train_model(factory, torch.as_tensor(x), y, cfg, device=cpu)
    for k, v in memory.model.state_dict().items():
        assert torch.equal(v, mapped.model.state_dict()[k]), k
    keep = np.arange(0, 300, 3)
    assert torch.equal(predict_logits(memory.model, rows.subset(keep)), predict_logits(memory.model, x[keep]))
    with pytest.raises(ValueError, match="hold 4 rows, declared 5"):
        arrays.write_npy("u", (5, 16), np.float32, [x[:4]])


def test_rows_of_uint8_scale_per_batch_and_stream_a_context():
    from winnow.tasks.models.nets import build_model
    from winnow.tasks.models.training import TrainConfig
    from winnow.tasks.scorers import TrainingContext

    pixels = np.arange(40, dtype=np.uint8).reshape(10, 4)
    rows = Rows(pixels, divisor=255)
    assert rows.take([3, 1]).dtype == torch.float32
    assert torch.equal(rows.take([3, 1]), torch.from_numpy(pixels[[3, 1]].astype(np.float32) / np.float32(255)))
    assert torch.equal(rows.subset(np.array([True] * 5 + [False] * 5)).materialize(), rows.take(range(5)))
    ctx = TrainingContext(rows, np.arange(10) % 2, 2, lambda: build_model("mlp", (4,), 2), [],
                          TrainConfig(epochs=1), np.array([f"s{i}" for i in range(10)]), kfold=2)
    assert "x" not in vars(ctx)  # not materialised until a scorer reads it
    held = np.concatenate([ctx.fold_probs(f)[0] for f in range(len(ctx.folds()))])
    assert sorted(held.tolist()) == list(range(10))
    assert "x" not in vars(ctx)
    assert torch.allclose(ctx.x, rows.materialize())
    with pytest.raises(ValueError, match="not numeric"):
        Rows(np.array(["a", "b"]))


def test_dask_tasks_carry_the_flow_settings_as_objects_and_a_one_certificate_ca_file(prefect_server, tmp_path):
    import pickle
    from pathlib import Path

    import cloudpickle
    from prefect.client.orchestration import get_client
    from prefect.context import SettingsContext
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL, temporary_settings

    from winnow.flows.task_overhead import LiveSettingsContext, lean_settings

    assert PREFECT_API_URL.value().startswith("http://")
    with lean_settings(tmp_path):
        live = SettingsContext.get()
        assert isinstance(live, LiveSettingsContext)
        sent = live.serialize()
        assert sent["settings"] is live.settings  # nothing converted, nothing re-read on a worker
        ca = Path(PREFECT_API_SSL_CERT_FILE.value())
        assert ca.parent == tmp_path and ca.read_text().count("BEGIN CERTIFICATE") == 1
        with get_client(sync_client=True) as client:  # the client a worker builds accepts the file
            assert client.api_healthcheck() is None
        rebuilt = SettingsContext(**pickle.loads(cloudpickle.dumps(sent)))  # what a worker does
        assert rebuilt.settings == live.settings
        with lean_settings(tmp_path):  # a worker entering its copy of the runner: no second rebuild
            assert SettingsContext.get() is live
    assert not isinstance(SettingsContext.get(), LiveSettingsContext)
    with temporary_settings({PREFECT_API_URL: "https://prefect.example/api"}):
        before = PREFECT_API_SSL_CERT_FILE.value()
        with lean_settings(tmp_path):  # over https the CA file is the user's
            assert PREFECT_API_SSL_CERT_FILE.value() == before
