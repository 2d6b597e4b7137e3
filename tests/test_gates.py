"""The pieces of the operate flow without the services: canaries, flagging, the review queue's
logic, arrivals (Parquet and image folders, claims), the watcher's scan, and the three GX gate
suites (real Great Expectations)."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import digits_parquet
from winnow.flows.watch import scan
from winnow.tasks.review import rank_flags as flag
from winnow.tasks import arrivals, canaries, gates, review
from winnow.tasks.data.dataset import Dataset


# ---------------------------------------------------------------- canaries


def test_canaries_flip_exactly_n_candidates_to_another_class():
    labels = np.arange(100) % 10
    candidates = np.arange(100) >= 40
    out, planted = canaries.plant(labels, candidates, 12, 10, seed=3)
    assert planted.sum() == 12 and not planted[:40].any()
    assert np.all(out[planted] != labels[planted]) and np.array_equal(out[~planted], labels[~planted])
    assert np.all((0 <= out) & (out < 10))
    again, planted2 = canaries.plant(labels, candidates, 12, 10, seed=3)
    assert np.array_equal(again, out) and np.array_equal(planted2, planted)  # deterministic by seed


def test_canary_recall():
    planted = np.array([1, 1, 1, 1, 0, 0], bool)
    assert canaries.recall(np.array([1, 0, 1, 1, 1, 0], bool), planted) == 0.75
    assert np.isnan(canaries.recall(np.ones(6, bool), np.zeros(6, bool)))
    with pytest.raises(ValueError, match="canaries must be >= 0"):
        canaries.plant(np.zeros(3, int), np.ones(3, bool), -1, 10, 0)


def test_flag_takes_the_primary_scorers_top_k_and_ranks_every_scorer():
    scores = {"a": np.array([0.1, 0.9, 0.5, 0.7]), "b": np.array([4.0, 1.0, 3.0, 2.0])}
    flagged, ranks = flag(scores, "a", 2)
    assert flagged.tolist() == [False, True, False, True]
    assert ranks["a"].tolist() == [4, 1, 3, 2] and ranks["b"].tolist() == [1, 4, 2, 3]
    f = gates.figures_of(flagged, np.array([0, 1, 1, 1], bool), np.array([0, 1, 0, 0], bool), k=2)
    # the canary (row 1) is caught; it counts against neither the noise rate nor the flagged fraction
    assert f["canary_recall"] == 1.0 and f["flagged_in_batch"] == 1 and f["flagged_fraction"] == 0.5
    assert f["estimated_wrong_labels"] == 1 and f["estimated_noise_rate"] == 0.25


# ---------------------------------------------------------------- the review queue's logic


def _queue(ids):
    rows = pd.DataFrame({"sample_id": ids, "batch_id": "b", "run_id": "r", "given_label": 1, "suggested_label": 2,
                         "given_class": "1", "suggested_class": "2", "score": 1.0, "scores": "{}", "ranks": "{}",
                         "status": "pending", "new_label": -1, "created_at": "", "decided_at": ""})
    return review.merge_new(review.empty_queue(), rows)


def test_decisions_drop_and_relabel_the_accepted_view():
    q = _queue(["s0", "s1", "s2"])
    q = review.apply_action(q, ["s0"], "drop", now="t")
    q = review.apply_action(q, ["s1"], "relabel", 5, now="t")
    assert review.merge_new(q, _queue(["s0", "s9"])).shape[0] == 4  # a queued sample is not asked again
    ds = Dataset("d", np.array(["s0", "s1", "s2", "s3"], dtype=object), np.zeros((4, 1, 2, 2), np.float32),
                 np.array([1, 1, 1, 3]), np.array(["train"] * 4, dtype=object), [str(i) for i in range(10)])
    acc = review.apply_decisions(ds, q)
    assert acc.sample_id.tolist() == ["s1", "s2", "s3"] and acc.label.tolist() == [5, 1, 3]
    with pytest.raises(ValueError, match="not in the review queue: nope"):
        review.apply_action(q, ["nope"], "accept")
    with pytest.raises(ValueError, match="relabel needs --to"):
        review.apply_action(q, ["s2"], "relabel")
    with pytest.raises(ValueError, match="unknown review action"):
        review.apply_action(q, ["s2"], "approve")


def test_decision_csv_errors_are_one_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("sample_id,decision,new_label\ns1,relabel,x\n")
    with pytest.raises(ValueError, match="row 2: relabel needs an integer new_label"):
        review.read_decision_csv(p)
    p.write_text("sample_id,decision,new_label\ns1,drop,\ns2,,\ns3,relabel,4\n")
    assert review.read_decision_csv(p) == [("s1", "drop", None), ("s3", "relabel", 4)]


# ---------------------------------------------------------------- arrivals


def test_an_image_folder_with_labels_csv_is_a_batch(tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    rows = []
    for i in range(6):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(folder / f"img{i}.png")
        rows.append(f"img{i}.png,{i % 3}")
    assert not arrivals.is_arrival(folder)  # no labels.csv yet: still being copied
    (folder / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    assert arrivals.is_arrival(folder)
    ds = arrivals.load_arrival(folder, "s", class_names=[str(c) for c in range(10)])
    assert ds.x.shape == (6, 1, 8, 8) and ds.label.tolist() == [0, 1, 2, 0, 1, 2] and ds.num_classes == 10
    # ids default to the path relative to the folder (issue 12), as for --dataset images
    assert ds.sample_id.tolist() == [f"img{i}.png" for i in range(6)] and ds.x.max() == pytest.approx(200 / 255)
    (folder / "labels.csv").write_text("file,label\nmissing.png,1\n")
    with pytest.raises(ValueError, match="image 'missing.png' not found"):
        arrivals.load_arrival(folder, "s")
    with pytest.raises(ValueError, match="not a batch"):
        arrivals.load_arrival(folder / "img0.png", "s")


def test_the_batch_id_does_not_depend_on_the_file_name(tmp_path):
    a = digits_parquet(tmp_path / "a.parquet", n=50)
    b = digits_parquet(tmp_path / "renamed.parquet", n=50)
    assert arrivals.load_arrival(a, "s").content_hash() == arrivals.load_arrival(b, "s").content_hash()


def test_a_batch_is_claimed_once(fresh_home):
    assert arrivals.claim("abc", "x.parquet", "run-1") is not None
    assert arrivals.claim("abc", "y.parquet", "run-2") is None
    assert arrivals.claimed_by("abc")["flow_run_id"] == "run-1"
    arrivals.release("abc")
    assert arrivals.claim("abc", "y.parquet", "run-2") is not None


def test_the_watcher_announces_only_files_that_stopped_changing(tmp_path):
    (tmp_path / ".x.parquet.tmp").write_bytes(b"partial")
    p = tmp_path / "a.parquet"
    p.write_bytes(b"1")
    seen, stable = scan(tmp_path, {})
    assert stable == [] and list(seen) == [str(p.resolve())]
    seen, stable = scan(tmp_path, seen)
    assert stable == [p.resolve()]
    p.write_bytes(b"12")  # grew: not stable until it stops
    assert scan(tmp_path, seen)[1] == []


# ---------------------------------------------------------------- the gate suites (real GX)


def _ds(ids, labels, shape=(1, 2, 2)):
    n = len(ids)
    return Dataset("s", np.array(ids, dtype=object), np.full((n, *shape), 0.5, np.float32), np.array(labels),
                   np.array(["train"] * n, dtype=object), [str(c) for c in range(3)])


def test_batch_gate_checks_against_the_accepted_data():
    accepted = _ds(["a", "b"], [0, 1])
    ok = gates.batch_gate(_ds(["c", "d"], [2, 0]), accepted)
    assert ok.success, ok.failures
    bad = gates.batch_gate(_ds(["a", "e"], [0, 5], shape=(1, 3, 3)), accepted)
    assert not bad.success
    text = "\n".join(bad.failures)
    assert "expect_column_values_to_not_be_in_set(sample_id" in text  # an id reused
    assert "expect_column_values_to_be_in_set(label" in text  # a class the accepted data lacks
    assert "expect_column_values_to_be_in_set(n_values" in text  # another sample shape


def test_scores_and_model_gates_use_the_configured_thresholds():
    cfg = gates.GateConfig.load(overrides=dict(max_noise_rate=0.2, max_flagged_fraction=0.1, min_canary_recall=0.6,
                                               accuracy_tolerance=0.01))
    assert gates.scores_gate(0.1, 0.05, 0.8, cfg).success
    failed = gates.scores_gate(0.25, 0.05, 0.5, cfg)
    assert [f.split("(")[1].split(",")[0] for f in failed.failures] == ["estimated_noise_rate", "canary_recall"]
    no_canaries = gates.scores_gate(0.1, 0.05, float("nan"), cfg)  # "clean" without proof is not trusted
    assert not no_canaries.success and "not_be_null(canary_recall" in no_canaries.failures[0]
    assert gates.scores_gate(0.1, 0.05, float("nan"), gates.GateConfig.load(overrides={"min_canary_recall": None})).success
    assert gates.model_gate(0.90, 0.905, cfg).success
    assert not gates.model_gate(0.88, 0.90, cfg).success
    assert gates.model_gate(0.5, None, cfg).success  # the first model has nothing to beat


def test_gate_config_is_loaded_once_from_the_shipped_file_then_the_users_then_overrides(tmp_path):
    shipped = gates.GateConfig.load()
    assert shipped.max_noise_rate == 0.3 and shipped.canaries == 10  # tasks/gate.toml
    p = tmp_path / "g.toml"
    p.write_text("canaries = 4\n[gate]\nmax_noise_rate = 0.1\nmin_canary_recall = false\n")
    mine = gates.GateConfig.load(p)
    assert (mine.max_noise_rate, mine.canaries, mine.min_canary_recall) == (0.1, 4, None)
    assert mine.max_flagged_fraction == shipped.max_flagged_fraction  # a key the file leaves out keeps its default
    assert gates.GateConfig.load(p, {"max_noise_rate": 0.2}).max_noise_rate == 0.2
    assert mine.with_overrides(canaries=None, accuracy_tolerance=0.05).canaries == 4
    p.write_text("[gate]\nmax_noise = 0.1\n")
    with pytest.raises(ValueError, match="unknown gate setting"):
        gates.GateConfig.load(p)
    p.write_text("[gate]\nmax_noise_rate = 1.5\n")
    with pytest.raises(ValueError, match="max_noise_rate must be a number in \\[0, 1\\], got 1.5"):
        gates.GateConfig.load(p)
    with pytest.raises(ValueError, match="canaries must be a non-negative integer"):
        gates.GateConfig.load(overrides={"canaries": -1})
    with pytest.raises(ValueError, match="gate config not found"):
        gates.GateConfig.load(tmp_path / "none.toml")


def test_the_served_deployment_and_winnow_gate_read_the_same_settings(tmp_path):
    import importlib.util
    from pathlib import Path

    from winnow.flows.cli import build_parser

    src = Path(__file__).resolve().parent.parent / "deployments" / "winnow_deployments.py"
    spec = importlib.util.spec_from_file_location("winnow_deployments", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    p = tmp_path / "g.toml"
    p.write_text("[gate]\nmax_flagged_fraction = 0.2\n")
    arrival = [d for d in module.build(gate_config=str(p), canaries=3) if d.name == "on-arrival"][0]
    served = gates.GateConfig.load(overrides=arrival.parameters["gate"])
    assert served == gates.GateConfig.load(p).with_overrides(canaries=3)
    assert served.max_flagged_fraction == 0.2 and served.canaries == 3
    args = build_parser().parse_args(["gate", "x.parquet", "--gate-config", str(p)])
    assert args.canaries is None and args.gate_config == str(p)  # cmd_gate: GateConfig.load(args.gate_config)
