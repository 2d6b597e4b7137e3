"""The on-arrival flow against a real temporary Prefect server, a real MLflow store (registry and
alias included), Great Expectations and the lake: pass, duplicate, bad batch, review decisions,
regressed model."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from helpers import digits_parquet
from winnow.tasks import lake, registry, review

pytestmark = pytest.mark.slow

STREAM = "t-operate"
EPOCHS = 10


def rows(lo, hi, labels=None):
    """A Parquet mutation keeping digits rows [lo, hi) (optionally editing labels)."""
    def mutate(cols):
        out = {k: v[lo:hi] for k, v in cols.items()}
        if labels:
            out["label"] = list(out["label"])
            for i, v in labels.items():
                out["label"][i] = v
        return out
    return mutate


@pytest.fixture(scope="module")
def batches_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("arrivals")
    digits_parquet(d / "a.parquet", n=1200, mutate=rows(0, 450))
    digits_parquet(d / "b.parquet", n=1200, mutate=rows(450, 900))
    digits_parquet(d / "bad.parquet", n=1200, mutate=rows(900, 1100, labels={3: 10, 4: 12}))
    return d


@pytest.fixture(scope="module")
def first(prefect_server, batches_dir):
    from winnow.flows.on_arrival import on_arrival

    return on_arrival(path=str(batches_dir / "a.parquet"), stream=STREAM, epochs=EPOCHS, canaries_n=8)


def test_an_arrival_is_explained_without_its_canaries_and_its_report_shows_why(first):
    from winnow.flows.explain import explain
    from winnow.tasks.explain_stages import planted_canaries

    run = lake.sql(f"SELECT * FROM runs WHERE run_id = '{first.run_id}'").iloc[0]
    result = explain(first.batch_id, top=5, vae_epochs=2, contrastive_n=200)  # an arrival by its batch id
    assert result.run_id == first.run_id and len(result.table) == 5
    canaries = planted_canaries(run["train_key"])
    assert len(canaries) == 8 and not canaries & set(result.table["sample_id"])
    page = open(first.report_path).read()
    assert page.count("id='why-flagged'") == 1 and all(s in page for s in result.table["sample_id"])
    explain(first.batch_id, top=3, vae_epochs=2, contrastive_n=200)  # again: the section is replaced, not added
    assert open(first.report_path).read().count("id='why-flagged'") == 1


def test_first_batch_passes_is_committed_queued_and_promoted(first):
    import mlflow

    assert first.status == "passed", first.verdict
    f = first.figures
    assert f["canaries"] == 8 and f["canary_recall"] >= 0.5  # the detector catches planted flips
    assert 0 <= f["estimated_noise_rate"] < 0.3 and f["candidate_accuracy"] > 0.8
    # the lake: the batch committed, its flagged samples queued (no canary among them)
    samples = lake.sql(f"SELECT sample_id, label FROM samples WHERE batch_id = '{first.batch_id}'")
    assert len(samples) == 450
    queue = lake.sql(f"SELECT * FROM review_queue WHERE batch_id = '{first.batch_id}'")
    assert len(queue) == first.flagged == f["flagged_in_batch"] > 0
    assert set(queue["status"]) == {"pending"} and set(queue["sample_id"]) <= set(samples["sample_id"])
    given = samples.set_index("sample_id").loc[queue["sample_id"], "label"].to_numpy()
    assert np.array_equal(queue["given_label"].to_numpy(), given)  # canary labels never reach the queue
    # the suggestions ask the label-free probe too, as the audit's do: the folds' and its average
    from winnow.tasks import artifacts, stages

    train_key = lake.sql(f"SELECT train_key FROM runs WHERE run_id = '{first.run_id}'")["train_key"].item()
    assert "second-opinion" in {r["name"] for r in first.stages}
    pool = stages.load_context(train_key)[1].train
    probs = review.suggestion_probs(artifacts.load_torch("oos", train_key).numpy(),
                                    artifacts.load_torch("second-opinion", train_key).numpy())
    at = pd.Index(pool.sample_id.astype(str)).get_indexer(queue["sample_id"])
    assert (at >= 0).all() and np.array_equal(probs[at].argmax(1), queue["suggested_label"].to_numpy())
    assert lake.sql(f"SELECT verdict FROM arrivals WHERE batch_id = '{first.batch_id}'")["verdict"].item() == "passed"
    # MLflow: the run, its report and gate artifacts, the registered version under the alias
    client = mlflow.MlflowClient()
    run = client.get_run(first.mlflow_run_id)
    assert run.data.tags["winnow.gate"] == "passed" and run.data.metrics["gate_passed"] == 1.0
    assert {"review.html", "gate.md"} <= {a.path for a in client.list_artifacts(first.mlflow_run_id)}
    champ = registry.champion()
    assert champ["version"] == first.champion_version and champ["run_id"] == first.mlflow_run_id
    assert champ["test_accuracy"] == pytest.approx(f["candidate_accuracy"])
    html = open(first.report_path).read()
    assert "GATE PASSED" in html and queue["sample_id"].iloc[0] in html
    # the candidate learned soft-all's targets (the default remedy): a pending flagged row its
    # suggestion, every other training row half its given label, half its suggestion
    from winnow.tasks.settings import paths

    assert "soft-targets" in {r["name"] for r in first.stages} and run.data.params["candidate_remedy"] == "soft-all"
    metas = [json.loads(p.read_text()) for p in (paths().artifacts / "train").glob("*.json")]
    (cand,) = [m for m in metas if m.get("targets_key")]
    stored = artifacts.load_torch("targets", cand["targets_key"])
    ids, targets = np.asarray(stored["sample_id"]), stored["targets"].numpy()
    labels = samples.set_index("sample_id").loc[ids, "label"].to_numpy()
    suggestion = probs[pd.Index(pool.sample_id.astype(str)).get_indexer(ids)]
    expected = (np.eye(probs.shape[1])[labels] + suggestion) / 2
    pending = np.isin(ids, queue["sample_id"])
    expected[pending] = suggestion[pending]
    assert pending.sum() == len(queue) and np.allclose(targets, expected, atol=1e-5)


def test_a_batch_arriving_twice_is_processed_once(first, batches_dir, tmp_path):
    from winnow.flows.on_arrival import on_arrival

    again = shutil.copy(batches_dir / "a.parquet", tmp_path / "a-copy.parquet")  # same content, new name
    result = on_arrival(path=str(again), stream=STREAM, epochs=EPOCHS, canaries_n=8)
    assert result.status == "duplicate" and result.batch_id == first.batch_id
    assert len(lake.sql(f"SELECT * FROM samples WHERE batch_id = '{first.batch_id}'")) == 450
    assert len(lake.sql(f"SELECT * FROM arrivals WHERE batch_id = '{first.batch_id}'")) == 1


def test_a_bad_batch_fails_the_gate_and_leaves_the_champion(first, batches_dir, capsys):
    from winnow.flows.cli import main
    from winnow.flows.on_arrival import on_arrival

    state = on_arrival(path=str(batches_dir / "bad.parquet"), stream=STREAM, epochs=EPOCHS, canaries_n=8,
                       return_state=True)
    assert state.is_failed()
    assert "expect_column_values_to_be_in_set(label" in str(state.message)
    assert registry.champion()["version"] == first.champion_version
    arrival = lake.sql("SELECT * FROM arrivals ORDER BY created_at DESC LIMIT 1").iloc[0]
    assert arrival["verdict"] == "failed" and not arrival["committed"]
    assert lake.sql(f"SELECT count(*) AS n FROM samples WHERE batch_id = '{arrival['batch_id']}'")["n"].item() == 0
    # CI usage: the recorded verdict as an exit code; the report of that run
    assert main(["gate"]) == 1
    assert main(["gate", "--run", first.batch_id]) == 0
    capsys.readouterr()
    assert main(["report", arrival["run_id"]]) == 0
    assert "GATE FAILED" in open(capsys.readouterr().out.strip()).read()


def test_review_decisions_shape_the_accepted_data(first, tmp_path, capsys):
    from winnow.flows.cli import main

    queue = review.read_queue()
    ids = list(queue[queue["batch_id"] == first.batch_id]["sample_id"])
    drop_id, relabel_id = ids[0], ids[1]
    assert main(["review", "drop", drop_id]) == 0
    assert main(["review", "relabel", relabel_id, "--to", "7"]) == 0
    assert main(["review", "accept", "no-such-id"]) == 2  # one clear line, no traceback
    assert "not in the review queue: no-such-id" in capsys.readouterr().err
    # the CSV route: export pending rows, decide one, import
    csv = tmp_path / "queue.csv"
    assert main(["review", "export", str(csv)]) == 0
    text = csv.read_text().splitlines()
    head, row = text[0].split(","), text[1].split(",")
    row[head.index("decision")] = "accept"
    csv.write_text("\n".join([text[0], ",".join(row)]) + "\n")
    assert main(["review", "import", str(csv)]) == 0
    status = review.read_queue().set_index("sample_id")["status"]
    assert status[drop_id] == "dropped" and status[relabel_id] == "relabelled" and status[row[0]] == "accepted"
    accepted = review.accepted_data(STREAM)
    assert drop_id not in set(accepted.sample_id)
    assert accepted.label[list(accepted.sample_id).index(relabel_id)] == 7


def test_a_regressed_model_fails_the_gate_and_leaves_the_champion(first, batches_dir):
    import mlflow

    from winnow.flows.on_arrival import on_arrival

    # an under-trained recipe (1 epoch): the data gates are relaxed so that only the model gate judges
    # (remedy="none": the candidate learns the labels, so without canaries it is the scored model)
    state = on_arrival(path=str(batches_dir / "b.parquet"), stream=STREAM, epochs=1, canaries_n=0,
                       gate={"min_canary_recall": None, "max_noise_rate": 1.0, "max_flagged_fraction": 1.0},
                       remedy="none", return_state=True)
    assert state.is_failed()
    assert "model: expect_column_values_to_be_between(accuracy_drop" in str(state.message)
    assert registry.champion()["version"] == first.champion_version
    arrival = lake.sql("SELECT * FROM arrivals ORDER BY created_at DESC LIMIT 1").iloc[0]
    run = mlflow.MlflowClient().get_run(arrival["mlflow_run_id"])
    assert run.data.tags["winnow.gate"] == "failed"
    assert run.data.metrics["candidate_accuracy"] < run.data.metrics["champion_accuracy"] - 0.02
    gates = lake.sql(f"SELECT * FROM gates WHERE run_id = '{arrival['run_id']}' AND NOT success")
    assert list(gates["suite"]) == ["model"]
    # without canaries the scored pool is the accepted data: with remedy "none" retraining on it is
    # served from cache
    cached = {s["name"]: s["cached"] for s in json.loads(arrival["stages"])}
    assert not cached["train"] and cached["retrain-accepted"]
