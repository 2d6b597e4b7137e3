"""A team's own data audited end to end (real Prefect server, MLflow store, GX, lake): an image
folder with wrong labels in both layouts, features, given pred_probs, a backbone; the flagged
samples reach the review queue; the export applies the decisions; bad input never reaches the lake."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from winnow.flows.cli import main
from winnow.tasks import lake, review

pytestmark = pytest.mark.slow
CLASSES = ("red", "green", "blue")


def _colour_image(c: int, rng, size) -> Image.Image:
    """A noisy blob of colour ``c``: learnable from a few dozen examples."""
    h, w = size
    arr = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    arr[..., c] = rng.integers(150, 256, (h, w))
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """Class folders of mixed JPEG/PNG and sizes; 6 of 90 images filed under a wrong class."""
    root = tmp_path_factory.mktemp("folder") / "colours"
    rng = np.random.default_rng(0)
    wrong = {}
    for i in range(90):
        true = i % 3
        filed = (true + 1) % 3 if i % 15 == 0 else true
        (root / CLASSES[filed]).mkdir(parents=True, exist_ok=True)
        name = f"{CLASSES[filed]}/{i:03d}.{'jpg' if i % 2 else 'png'}"
        _colour_image(true, rng, (16, 16) if i % 4 else (20, 18)).save(root / name)
        if filed != true:
            wrong[name] = true
    return root, wrong


def cli(*args: str) -> tuple[int, str, str]:
    """``winnow ARGS`` in-process (the session's Prefect server); returns (exit code, stdout, stderr).
    Plain StringIO redirection, not capsys: Prefect's log handler may keep the stream it first saw."""
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def _rows(table: str, run_id: str):
    return lake.sql(f"SELECT * FROM {table} WHERE run_id = '{run_id}'")


def test_an_image_folder_is_audited_flagged_queued_and_exported(prefect_server, fresh_home, pets, tmp_path):
    root, wrong = pets
    rc, out, _ = cli("run", "--dataset", "images", "--path", str(root), "--model", "cnn", "--epochs", "6")
    assert rc == 0
    assert "estimated wrong labels:" in out and "winnow export" in out and "nan" not in out.lower()
    run = lake.sql("SELECT * FROM runs WHERE mode = 'real'").iloc[0]
    flags = _rows("flags", run["run_id"])
    assert 0 < len(flags) == run["k"] < 45
    assert set(flags["split"]) <= {"train", "test"}
    samples = lake.sql("SELECT sample_id, split FROM samples")
    assert len(samples) == 90  # every row audited, the test split included
    scores = _rows("scores", run["run_id"])
    assert scores.groupby("scorer").size().eq(90).all()
    top = set(flags.sort_values("rank")["sample_id"].head(len(wrong)))
    assert len(top & set(wrong)) >= len(wrong) // 2, (top, wrong)  # real detection, far above chance (6/90)
    hit = flags[flags["sample_id"].isin(wrong)]
    assert (hit["suggested_class"] == [CLASSES[wrong[s]] for s in hit["sample_id"]]).mean() >= 0.5
    queue = review.read_queue()
    assert set(flags["sample_id"]) <= set(queue["sample_id"])

    # review two, export: input form (file + image bytes as they came), provenance
    a, b = flags.sort_values("rank")["sample_id"].head(2)
    review.decide([a], "relabel", int(flags.set_index("sample_id").loc[a, "suggested_label"]))
    review.decide([b], "drop")
    dest = tmp_path / "clean.parquet"
    assert cli("export", run["run_id"][:8], "--out", str(dest))[0] == 0
    t = pq.read_table(dest).to_pandas().set_index("id")
    assert len(t) == 89 and b not in t.index and t.loc[a, "winnow_provenance"].startswith("relabelled from ")
    assert t.loc[a, "label"] == flags.set_index("sample_id").loc[a, "suggested_class"]  # names, as the folders
    assert t.loc[a, "image"] == (root / t.loc[a, "file"]).read_bytes()
    rc, out, _ = cli("export", run["run_id"], "--dry-run", "--drop", "flagged")
    # the relabelled flag stays (a reviewer decided); the dropped one and every undecided flag go
    assert rc == 0 and f"would write {90 - len(flags) + 1:,} of 90 rows" in out
    # the folder form with soft labels: 89 rows, a target for all but the reviewed one, over 3 classes
    assert cli("export", run["run_id"], "--out", str(tmp_path / "soft.parquet"), "--relabel", "soft")[0] == 0
    soft = pq.read_table(tmp_path / "soft.parquet").to_pandas().set_index("id")["winnow_soft_label"]
    assert len(soft) == 89 and soft.isna().tolist() == [i == a for i in soft.index]
    assert {len(v) for v in soft.dropna()} == {len(CLASSES)}

    # why: a real-data run is explained like an audit (IG and latent counterfactuals on its images)
    rc, out, err = cli("explain", run["run_id"], "--top", "3", "--vae-epochs", "2")
    assert rc == 0, err[-2000:]
    explained = _rows("explanations", run["run_id"])
    assert list(explained["sample_id"]) == list(flags.sort_values("rank")["sample_id"].head(3))
    assert explained["cf_given_success"].notna().all() and (explained["ig_gap_given"] >= 0).all()
    assert {"ig", "counterfactual"} <= set(_rows("explain_checks", run["run_id"])["method"])
    from winnow.tasks import review_media

    assert set(review_media.explanation_images(list(explained["sample_id"]))) == set(explained["sample_id"])


def test_labels_csv_features_and_pred_probs(prefect_server, fresh_home, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    folder = tmp_path / "flat"
    folder.mkdir()
    lines = []
    for i in range(60):
        _colour_image(i % 3, rng, (12, 12)).save(folder / f"im{i}.webp")
        lines.append(f"im{i}.webp,{i % 3},{'test' if i < 12 else 'train'}")
    (folder / "labels.csv").write_text("file,label,split\n" + "\n".join(lines) + "\n")
    rc, out, err = cli("run", "--dataset", "images", "--path", str(folder), "--classes", ",".join(CLASSES),
                       "--epochs", "3", "--image-size", "8,8")
    assert rc == 0 and "estimated wrong labels:" in out, err[-2000:]

    n = 400
    centres = rng.normal(size=(4, 16)) * 3
    y = rng.integers(0, 4, n)
    x = (centres[y] + rng.normal(size=(n, 16))).astype(np.float32)
    given = y.copy()
    given[:20] = (y[:20] + 1) % 4  # 5% wrong
    feats = tmp_path / "emb.parquet"
    pq.write_table(pa.table({"id": [f"e{i}" for i in range(n)], "label": given,
                             "features": pa.array(list(x), pa.list_(pa.float32()))}), feats)
    assert cli("run", "--dataset", "parquet", "--path", str(feats), "--epochs", "5")[0] == 0
    run = lake.sql("SELECT * FROM runs WHERE mode = 'real' ORDER BY created_at DESC").iloc[0]
    assert run["model"] == "mlp"
    flags = _rows("flags", run["run_id"])
    assert len(set(flags["sample_id"]) & {f"e{i}" for i in range(20)}) >= 15
    # --relabel soft: the user's file back with every row's training target (soft-all): an undecided
    # flag trains on its suggestion, another row on half its label and half that; a reviewed row on its label
    first = flags.sort_values("rank")["sample_id"].iloc[0]
    review.decide([first], "accept")
    dest = tmp_path / "soft.parquet"
    monkeypatch.setattr("winnow.tasks.export.EXPORT_BATCH_ROWS", 64)  # streamed in 7 parts
    rc, out, _ = cli("export", run["run_id"], "--out", str(dest), "--relabel", "soft")
    assert rc == 0 and f"{n - 1:,} with a soft label" in out
    t = pq.read_table(dest)
    assert json.loads(t.schema.metadata[b"winnow_soft_label_classes"]) == ["0", "1", "2", "3"]
    t = t.to_pandas().set_index("id")
    assert len(t) == n and list(t.columns[:2]) == ["label", "features"]  # the input's columns, then winnow's
    assert list(t.index) == [f"e{i}" for i in range(n)]  # the file's order, across the parts
    assert np.allclose(np.stack(t["features"].to_numpy()), x)  # the features as they came in
    assert t["winnow_soft_label"].isna().tolist() == [i == first for i in t.index]
    stored = _rows("suggestions", run["run_id"]).set_index("sample_id")["probs"]
    suggestion = np.stack(stored.loc[t.index].to_numpy())
    soft = np.stack(t["winnow_soft_label"].drop(first).to_numpy())
    assert np.allclose(soft.sum(1), 1, atol=1e-5)
    flagged = t.index.drop(first).isin(flags["sample_id"])
    rest = t.drop(first)
    assert np.allclose(soft[flagged], suggestion[t.index != first][flagged], atol=1e-6)
    assert (soft[flagged].argmax(1) == rest["label"][flagged]).all()
    assert (rest["label"][flagged] == flags.set_index("sample_id").loc[rest.index[flagged], "suggested_label"]).all()
    assert rest["winnow_provenance"][flagged].str.startswith("soft target, given ").all()
    half = (np.eye(4)[rest["label"][~flagged]] + suggestion[t.index != first][~flagged]) / 2
    assert np.allclose(soft[~flagged], half, atol=1e-6) and (rest["winnow_provenance"][~flagged] == "kept").all()
    # most wrong labels that were flagged put most of their target on the true class
    wrong = [i for i, s in enumerate(rest.index[flagged]) if int(s[1:]) < 20]
    assert np.mean([soft[flagged][i][y[int(rest.index[flagged][i][1:])]] > 0.5 for i in wrong]) >= 0.8
    # embeddings are explained by IG over their dimensions; counterfactuals need images
    rc, out, err = cli("explain", run["run_id"], "--top", "4")
    assert rc == 0, err[-2000:]
    assert len(_rows("explanations", run["run_id"])) == 4
    assert set(_rows("explain_checks", run["run_id"])["method"]) == {"ig"}

    probs = np.full((n, 4), 0.02)
    probs[np.arange(n), y] = 0.94
    pp = tmp_path / "probs.parquet"
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(n)], "label": given,
                             "pred_probs": pa.array(list(probs), pa.list_(pa.float64()))}), pp)
    rc, out, _ = cli("run", "--dataset", "parquet", "--path", str(pp))
    # 20 are wrong; the default estimator (`expected`, docs/remedies.md) counts 18 of them
    assert rc == 0 and "estimated wrong labels: 18 of 400 (4.5%)" in out and "given pred_probs" in out
    run = lake.sql("SELECT * FROM runs WHERE mode = 'real' ORDER BY created_at DESC").iloc[0]
    flagged = set(_rows("flags", run["run_id"])["sample_id"])
    assert run["model"] == "given-probs" and len(flagged) == 18 and flagged <= {f"p{i}" for i in range(20)}
    rc, _, err = cli("run", "--dataset", "parquet", "--path", str(pp), "--scorers", "tracin")
    assert rc == 2 and "need a trained model" in err
    rc, _, err = cli("explain", run["run_id"])
    assert rc == 2 and "audited from given pred_probs: there is no model to explain" in err.strip().splitlines()[-1]


def test_a_backbone_embeds_then_the_head_is_audited(prefect_server, fresh_home, pets, tmp_path):
    root, _ = pets
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten()).eval()
    enc = tmp_path / "encoder.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 16, 16),),
                                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)), enc)
    assert cli("run", "--dataset", "images", "--path", str(root), "--backbone", str(enc), "--epochs", "3")[0] == 0
    run = lake.sql("SELECT * FROM runs WHERE mode = 'real'").iloc[0]
    assert len(_rows("scores", run["run_id"])) == 3 * 90
    rc, _, err = cli("run", "--dataset", "images", "--path", str(root), "--backbone", str(enc), "--model", "cnn")
    assert rc == 2 and "--model mlp" in err


def test_bad_user_data_is_refused_before_the_lake(prefect_server, fresh_home, tmp_path):
    n = 30
    flat = pa.array([list(range(16))] * n, pa.list_(pa.float32()))
    p = tmp_path / "flat.parquet"
    pq.write_table(pa.table({"id": [f"f{i}" for i in range(n)], "label": [i % 3 for i in range(n)],
                             "features": flat}), p)
    rc, _, err = cli("run", "--dataset", "parquet", "--path", str(p), "--model", "cnn")
    assert rc == 2 and "--model cnn needs images" in err
    bad = tmp_path / "gap.parquet"
    pq.write_table(pa.table({"id": [f"g{i}" for i in range(n)], "label": [i % 3 for i in range(n - 1)] + [57],
                             "features": flat}), bad)
    with pytest.raises(Exception, match="gaps: 3..56"):
        from winnow.flows.audit import audit
        audit(dataset="parquet", path=str(bad))
    assert not (fresh_home / "lake" / "samples").exists() or not any((fresh_home / "lake" / "samples").iterdir())
