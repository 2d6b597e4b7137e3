"""The audit flow against a real temporary Prefect server, a real MLflow store and the lake."""
import numpy as np
import pytest

from helpers import digits_parquet
from winnow.tasks import lake
from winnow.tasks.validation import ValidationFailed

pytestmark = pytest.mark.slow

COMPUTE_STAGES = {"ingest", "validate", "inject-noise", "train"}


@pytest.fixture(scope="module")
def first_run(prefect_server):
    from winnow.flows.audit import audit

    return audit(dataset="digits", noise="symmetric", rate=0.2, seed=0, model="mlp",
                 scorers="loss,random", prune_k=None, epochs=4)


def test_audit_reports_detection_and_accuracy(first_run):
    rows = {r["scorer"]: r for r in first_run.rows}
    assert set(rows) == {"loss", "random"}
    assert rows["loss"]["auroc"] > rows["random"]["auroc"] + 0.2
    assert 0 < first_run.k < first_run.params["n_train"]
    from winnow.tasks import noise_rate

    assert first_run.k_source == noise_rate.SOURCE
    assert 0.5 < first_run.accuracy["noisy"] < first_run.accuracy["oracle"] + 0.05


def test_lake_holds_the_run(first_run):
    run_id = first_run.run_id
    noise = lake.sql(f"SELECT * FROM noise WHERE run_id = '{run_id}'")
    assert len(noise) == first_run.params["n_train"]
    assert noise["is_flipped"].sum() == round(0.2 * len(noise))
    assert (noise["original_label"] != noise["noisy_label"]).sum() == noise["is_flipped"].sum()
    # the test split is never noised: none of its ids appear in the noise table
    test_ids = lake.sql("SELECT sample_id FROM samples WHERE split = 'test'")["sample_id"]
    assert len(test_ids) > 300 and not set(test_ids) & set(noise["sample_id"])
    scores = lake.sql(f"SELECT scorer, count(*) AS n FROM scores WHERE run_id = '{run_id}' GROUP BY scorer")
    assert dict(zip(scores.scorer, scores.n)) == {"loss": len(noise), "random": len(noise)}
    auroc = lake.sql(f"SELECT value FROM metrics WHERE run_id = '{run_id}' AND scorer = 'loss' AND name = 'auroc'")
    assert auroc["value"].item() == pytest.approx(next(r["auroc"] for r in first_run.rows if r["scorer"] == "loss"))
    runs = lake.sql(f"SELECT * FROM runs WHERE mlflow_run_id = '{first_run.mlflow_run_id}'")
    assert runs["run_id"].item() == run_id


def test_mlflow_has_parent_and_nested_runs(first_run):
    import mlflow

    client = mlflow.tracking.MlflowClient()
    parent = client.get_run(first_run.mlflow_run_id)
    assert parent.data.metrics["loss.auroc"] == pytest.approx(next(r["auroc"] for r in first_run.rows if r["scorer"] == "loss"))
    assert parent.data.params["dataset"] == "digits" and parent.data.params["noise"] == "symmetric"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{first_run.mlflow_run_id}'")
    names = {c.info.run_name for c in children}
    assert {"ingest", "validate", "train", "score-loss", "retrain-loss", "retrain-oracle"} <= names
    files = {a.path for a in client.list_artifacts(first_run.mlflow_run_id)}
    assert {"detection.png", "summary.md"} <= files
    assert mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id],
                                       filter_string=f"source_run_id = '{first_run.mlflow_run_id}'", output_format="list")


def test_identical_rerun_is_served_from_cache(first_run):
    from winnow.flows.audit import audit

    again = audit(dataset="digits", noise="symmetric", rate=0.2, seed=0, model="mlp",
                  scorers="loss,random", prune_k=None, epochs=4)
    computed = [s["name"] for s in again.stages if not s["cached"]]
    assert computed == ["commit", "publish"], computed  # both are idempotent, uncached by design
    assert again.rows == first_run.rows and again.run_id == first_run.run_id
    assert again.mlflow_run_id != first_run.mlflow_run_id  # every flow run is tracked


def test_changing_the_scorer_list_recomputes_only_scoring_and_after(first_run):
    from winnow.flows.audit import audit

    changed = audit(dataset="digits", noise="symmetric", rate=0.2, seed=0, model="mlp",
                    scorers="loss,loss-mean", prune_k=None, epochs=4)
    status = {s["name"]: s["cached"] for s in changed.stages}
    assert all(status[s] for s in COMPUTE_STAGES | {"out-of-sample", "estimate-k", "score-loss", "retrain-loss"})
    assert not status["score-loss-mean"] and not status["retrain-loss-mean"]


def test_the_recommended_detector_and_a_remedy_run_by_default(first_run):
    """No --scorers, no --remedy: the recommended detector comes first, and every scorer's top k is
    retrained with the default remedy, soft-all: soft targets from the out-of-sample folds and
    the label-free probe (the `second-opinion` stage), nothing dropped (reusing the run's cached
    training)."""
    from winnow.flows.audit import audit
    from winnow.tasks.remedies import DEFAULT_REMEDY
    from winnow.tasks.scorers.base import RECOMMENDED

    assert DEFAULT_REMEDY == "soft-all"
    result = audit(dataset="digits", noise="symmetric", rate=0.2, seed=0, model="mlp", epochs=4)
    assert result.rows[0]["scorer"] == RECOMMENDED
    assert result.params["remedy"] == "soft-all"
    status = {s["name"]: s["cached"] for s in result.stages}
    assert status["train"] and not status[f"retrain-{RECOMMENDED}"] and "second-opinion" in status
    rows = {r["scorer"]: r for r in result.rows}
    assert rows[RECOMMENDED]["auroc"] > rows["random"]["auroc"] + 0.2
    # the flags were kept with soft targets, not dropped (pruning would drop nearly k flipped rows)
    assert rows[RECOMMENDED]["removed_flipped"] == 0 and result.k > 0
    with pytest.raises(ValueError, match="--remedy"):
        audit(dataset="digits", seed=0, epochs=4, remedy="burn")


def test_a_bad_batch_stops_the_flow_and_never_reaches_the_lake(prefect_server, tmp_path):
    from winnow.flows.audit import audit

    def mutate(cols):
        cols["id"][1] = cols["id"][0]
        cols["label"][2] = 10
        return cols

    before = set(lake.sql("SELECT DISTINCT batch_id FROM samples")["batch_id"]) if (lake.paths().lake / "samples").exists() else set()
    with pytest.raises(ValidationFailed) as err:
        audit(dataset="parquet", path=str(digits_parquet(tmp_path / "bad.parquet", n=300, mutate=mutate)),
              scorers="loss", epochs=2)
    assert "expect_column_values_to_be_unique(sample_id)" in str(err.value)
    after = set(lake.sql("SELECT DISTINCT batch_id FROM samples")["batch_id"])
    assert after == before


def test_user_parquet_audits_end_to_end(prefect_server, tmp_path):
    from winnow.flows.audit import audit

    path = digits_parquet(tmp_path / "mine.parquet", n=900, png=True)
    result = audit(dataset="parquet", path=str(path), noise="class-pair", rate=0.1, seed=1,
                   scorers="loss", prune_k=40, epochs=10)
    assert result.k == 40 and result.k_source == "--prune-k"
    assert result.rows[0]["auroc"] > 0.7
    ids = lake.sql(f"SELECT sample_id FROM samples WHERE batch_id = '{result.params['batch_id']}'")["sample_id"]
    assert len(ids) == 900 and np.all(ids.str.startswith("u"))
