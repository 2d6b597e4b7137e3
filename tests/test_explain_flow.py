"""The explain flow on digits against a real temporary Prefect server, the lake and MLflow."""
import pytest

from winnow.tasks import lake

pytestmark = pytest.mark.slow

TOP = 4


@pytest.fixture(scope="module")
def explained(prefect_server):
    """An audit that explains its top flagged samples, then `explain` by MLflow run id with EDDA."""
    from winnow.flows.audit import audit
    from winnow.flows.explain import explain

    audited = audit(dataset="digits", noise="symmetric", rate=0.2, seed=0, model="mlp", scorers="loss",
                    prune_k=50, epochs=3, explain_top=TOP)
    again = explain(audited.mlflow_run_id, top=TOP, edda=True, eval_n=300)
    return audited, again


def test_audit_runs_explain_after_publishing(explained):
    audited, _ = explained
    names = [s["name"] for s in audited.stages]
    assert names[-2:] == ["publish", "explain"]


def test_explain_resolves_the_mlflow_id_and_reuses_the_cached_stages(explained):
    audited, again = explained
    assert again.run_id == audited.run_id and again.scorer == "loss"
    cached = {s["name"]: s["cached"] for s in again.stages}
    assert all(cached[s] for s in ("explain-ig", "explain-vae", "explain-counterfactuals", "explain-contrastive"))
    assert not cached["explain-edda"]


def test_lake_tables_hold_sane_values(explained):
    audited, again = explained
    rows = lake.sql(f"SELECT * FROM explanations WHERE run_id = '{audited.run_id}' ORDER BY rank")
    assert len(rows) == TOP  # the rerun replaced the audit's part instead of adding rows
    top_ids = lake.sql(f"SELECT sample_id FROM scores WHERE run_id = '{audited.run_id}' AND scorer = 'loss' "
                       f"ORDER BY score DESC LIMIT {TOP}")["sample_id"]
    assert list(rows["sample_id"]) == list(top_ids)
    assert (rows["given_label"] != rows["suggested_label"]).all()
    # IG: every sample met the completeness tolerance (rtol 1e-2 of the explained logit change)
    assert (rows["ig_steps"] > 0).all()
    for t in ("given", "suggested"):
        assert (rows[f"ig_gap_{t}"] <= 1e-2 * rows[f"ig_delta_{t}"].abs() + 1e-4).all()
        ok = rows[f"cf_{t}_success"]
        assert (rows.loc[ok, f"cf_{t}_latent_distance"] >= 0).all()
    checks = lake.sql(f"SELECT * FROM explain_checks WHERE run_id = '{audited.run_id}'")
    assert set(checks["method"]) == {"ig", "counterfactual", "edda"}
    v = {(c, n): x for c, n, x in zip(checks["method"], checks["name"], checks["value"])}
    assert v[("ig", "converged_fraction")] == 1.0 and v[("ig", "gap_max")] < 0.05
    assert 0 <= v[("counterfactual", "given_validity")] <= 1
    assert v[("counterfactual", "given_validity")] == pytest.approx(rows["cf_given_success"].mean())
    for name in ("sufficiency_mean", "necessity_mean", "sufficiency_min", "necessity_min"):
        assert 0 <= v[("counterfactual", name)] <= 1, name
    assert v[("edda", "run_drop_top")] > v[("edda", "run_drop_random")]  # IG points at what the model uses
    assert 0.5 < v[("edda", "run_test_accuracy")] <= 1 and 0.3 < v[("edda", "edda_test_accuracy")] <= 1
    assert v[("edda", "run_test_accuracy")] == pytest.approx(audited.accuracy["noisy"])


def test_pngs_exist(explained):
    _, again = explained
    paths = list(again.table["image_path"]) + [again.table["grid_path"].iloc[0]]
    for p in paths:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", p
    assert len(list(again.report_dir.glob("sample-*.png"))) == TOP


def test_mlflow_run_has_the_metrics_and_images(explained):
    import mlflow

    audited, again = explained
    client = mlflow.tracking.MlflowClient()
    parent = client.get_run(again.mlflow_run_id)
    assert parent.info.run_name == f"explain {audited.run_id}"
    assert parent.data.tags["winnow.run_id"] == audited.run_id
    assert parent.info.experiment_id == client.get_run(audited.mlflow_run_id).info.experiment_id
    for m in ("ig.gap_max", "counterfactual.given_validity", "counterfactual.sufficiency_mean",
              "edda.run_alignment", "edda.edda_test_accuracy"):
        assert m in parent.data.metrics, m
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{again.mlflow_run_id}'")
    nested = {c.info.run_name: c for c in children}
    assert {"explain-ig", "explain-vae", "explain-edda", "explanations"} <= set(nested)
    files = {a.path for a in client.list_artifacts(nested["explanations"].info.run_id, "explain")}
    assert "explain/grid.png" in files and sum(f.endswith(".png") for f in files) == TOP + 1


def test_report_section_embeds_images_and_checks(explained):
    from winnow.tasks.explain_report import explain_section_html

    audited, again = explained
    page = explain_section_html(audited.run_id)
    assert page.count("<img") == TOP and page.count("data:image/png;base64,") == TOP
    for sid in again.table["sample_id"]:
        assert sid in page
    for marker in ("data-check='ig'", "data-check='counterfactual'", "data-check='edda'", "sufficiency_mean"):
        assert marker in page
    assert "No explanations" in explain_section_html("0000000000000000")


def test_review_page_is_written_and_logged(explained):
    import mlflow

    audited, again = explained
    page = (again.report_dir / "review.html").read_text()
    assert page.startswith("<!doctype html>") and "winnow review report" in page
    assert all(sid in page for sid in again.table["sample_id"])
    files = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(again.mlflow_run_id, "explain")}
    assert "explain/review.html" in files


def test_unknown_run_is_one_clear_line(explained, capsys):
    from winnow.flows.cli import main
    from winnow.flows.explain import resolve_run

    with pytest.raises(ValueError, match=r"no run 'nope' in the lake \(see `winnow sql"):
        resolve_run("nope")
    assert main(["explain", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["winnow explain: error: no run 'nope' in the lake (see `winnow sql \"SELECT * FROM runs\"`)"]
    with pytest.raises(SystemExit):  # argparse: choices
        main(["explain", explained[0].run_id, "--baseline", "zebra"])
