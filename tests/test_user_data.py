"""A team's own data in every form the audit takes (image folders, Parquet bytes / arrays /
features / numeric columns / pred_probs), the declared class set and its refusals (real GX), the
model-fit check, the backbone loader and the export plan. No Prefect here: see test_real_audit.py."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from winnow.tasks import batches
from winnow.tasks.data.classes import ClassSpec, map_labels
from winnow.tasks.data.images import load_image_folder
from winnow.tasks.data.tables import load_parquet
from winnow.tasks.export import plan_cleaning
from winnow.tasks.models.backbone import embed, load_encoder
from winnow.tasks.models.nets import check_fits
from winnow.tasks.validation import ValidationFailed, validate_batch


def _img(value: int, size, mode="RGB") -> Image.Image:
    h, w = size
    if mode == "L":
        return Image.fromarray(np.full((h, w), value, np.uint8))
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., value % 3] = 50 + value
    return Image.fromarray(arr)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


# ---------------------------------------------------------------- image folders


def test_class_folders_of_mixed_sizes_formats_and_channels(tmp_path):
    root = tmp_path / "pets"
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            size = (12, 10) if i < 2 else (20, 16)  # most common 12x10; one larger, resized
            _img(10 * i + c, size).save(root / name / f"{i}.{['jpg', 'png', 'webp'][i]}")
    _img(5, (12, 10), "L").save(root / "cat" / "grey.png")  # grey among colour: repeated into RGB
    (root / "dog" / "notes.txt").write_text("not an image")
    ds = load_image_folder(root)
    assert ds.kind == "images" and ds.values.dtype == np.uint8 and ds.values.shape == (7, 3, 12, 10)
    assert ds.class_names == ["cat", "dog"] and sorted(ds.label.tolist()) == [0, 0, 0, 0, 1, 1, 1]
    assert "cat/grey.png" in ds.sample_id.tolist()  # ids: the path relative to the root
    grey = ds.values[ds.sample_id.tolist().index("cat/grey.png")]
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all() and grey.max() == 5
    assert ds.meta["resized"] == 2 and ds.meta["classes_source"].startswith("class folders")
    assert ds.x.dtype == np.float32 and ds.x.max() <= 1.0
    small = load_image_folder(root, image_size=(8, 8))
    assert small.values.shape == (7, 3, 8, 8)


def test_train_and_test_folders_give_the_split(tmp_path):
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                _img(i, (6, 6), "L").save(tmp_path / split / c / f"{i}.png")
    ds = load_image_folder(tmp_path)
    assert ds.values.shape == (8, 1, 6, 6)
    assert sorted(ds.split.tolist()) == ["test"] * 4 + ["train"] * 4
    assert ds.sample_id[0].startswith(("train/", "test/"))


def test_flat_folder_with_labels_csv_and_a_corrupt_file(tmp_path):
    for i in range(4):
        _img(i, (8, 8)).save(tmp_path / f"f{i}.jpg")
    (tmp_path / "labels.csv").write_text("file,label,split\n" + "\n".join(
        f"f{i}.jpg,{'ab'[i % 2]},{'train' if i else 'test'}" for i in range(4)) + "\n")
    ds = load_image_folder(tmp_path)
    assert ds.class_names == ["a", "b"] and ds.split.tolist() == ["test", "train", "train", "train"]
    (tmp_path / "f2.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(ValueError, match=r"f2\.jpg: not a readable image"):
        load_image_folder(tmp_path)


def test_an_image_folder_decodes_into_a_spilled_file_with_the_same_pixels(tmp_path, fresh_home):
    """With a spill folder (what ingest gives) the pixels go to a .npy file, a row at a time,
    and come back memory-mapped: the same array as decoded in memory, truncation still refused."""
    from winnow.tasks import arrays

    root = tmp_path / "pets"
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            _img(10 * i + c, (12, 10) if i < 3 else (7, 9)).save(root / name / f"{i}.png")
    in_memory = load_image_folder(root)
    with arrays.spill_folder() as spill:  # as ingest does
        spilled = load_image_folder(root, spill_dir=spill)
        assert isinstance(spilled.values, np.memmap) and str(spilled.values.filename) == str(spill / "pixels.npy")
        np.testing.assert_array_equal(np.asarray(spilled.values), in_memory.values)
        assert spilled.meta["resized"] == in_memory.meta["resized"] == 2
        assert arrays.adopt(spilled.values, "k" * 64) is not None  # ingest's rename takes it
        (root / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # a broken header
        with pytest.raises(ValueError, match=r"dog/3\.png: not a readable image"):
            load_image_folder(root, spill_dir=spill)


def test_decode_all_reads_a_callable_source_twice_and_refuses_a_changed_count():
    from winnow.tasks.data.images import decode_all

    blobs = [_encode(_img(i, (6, 4)), "PNG") for i in range(5)]
    calls = []

    def source():
        calls.append(1)
        return iter(blobs)

    pixels, info = decode_all(source, lambda i: f"row {i}", n=5)
    assert len(calls) == 2 and pixels.shape == (5, 3, 6, 4) and info["resized"] == 0
    np.testing.assert_array_equal(pixels, decode_all(blobs, [f"row {i}" for i in range(5)])[0])
    with pytest.raises(ValueError, match="expected 6 images, read 5"):
        decode_all(source, lambda i: f"row {i}", n=6)


# ---------------------------------------------------------------- Parquet forms


def _write(path, cols: dict, meta: dict | None = None):
    table = pa.table(cols)
    if meta:
        table = table.replace_schema_metadata(meta)
    pq.write_table(table, path)
    return path


def test_parquet_encoded_jpeg_png_webp_bytes(tmp_path):
    blobs = [_encode(_img(i, (9, 7) if i % 3 else (5, 5)), fmt) for i, fmt in enumerate(["JPEG", "PNG", "WEBP"] * 4)]
    p = _write(tmp_path / "b.parquet", {"id": [f"s{i}" for i in range(12)], "label": [i % 3 for i in range(12)],
                                        "image": pa.array(blobs, pa.binary())})
    ds = load_parquet(p)
    assert ds.values.shape == (12, 3, 9, 7) and ds.values.dtype == np.uint8 and ds.meta["form"] == "encoded images"
    spill = tmp_path / "spill"
    spill.mkdir()
    spilled = load_parquet(p, spill_dir=spill)  # decoded a batch at a time into a mapped file
    assert isinstance(spilled.values, np.memmap)
    np.testing.assert_array_equal(np.asarray(spilled.values), ds.values)
    blobs[7] = None
    bad = _write(tmp_path / "n.parquet", {"id": [f"s{i}" for i in range(12)], "label": [i % 3 for i in range(12)],
                                          "image": pa.array(blobs, pa.binary())})
    with pytest.raises(ValueError, match=r"column 'image' row 7 \(id s7\) is null"):
        load_parquet(bad)


def test_parquet_flat_arrays_need_a_shape(tmp_path):
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 256, (6, 2 * 4 * 3)).astype(np.uint8)
    cols = {"id": [f"s{i}" for i in range(6)], "label": [0, 1] * 3,
            "pixels": pa.array(list(flat), pa.list_(pa.uint8()))}
    p = _write(tmp_path / "flat.parquet", cols)
    with pytest.raises(ValueError, match="--shape C,H,W"):
        load_parquet(p)
    ds = load_parquet(p, shape=(2, 4, 3))
    assert ds.values.shape == (6, 2, 4, 3) and np.array_equal(ds.values.reshape(6, -1), flat)
    meta_shaped = load_parquet(_write(tmp_path / "m.parquet", cols, {"shape": "2,4,3"}))
    assert meta_shaped.values.shape == (6, 2, 4, 3)
    with pytest.raises(ValueError, match="needs 27"):
        load_parquet(p, shape=(3, 3, 3))


def test_parquet_features_and_numeric_columns_are_features(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(8, 5)).astype(np.float32) * 40  # embeddings are not in [0, 1]
    p = _write(tmp_path / "f.parquet", {"sample_id": [f"e{i}" for i in range(8)], "label": ["x", "y"] * 4,
                                        "features": pa.array(list(emb), pa.list_(pa.float32()))})
    ds = load_parquet(p)
    assert ds.kind == "features" and ds.values.shape == (8, 5) and np.allclose(ds.values, emb)
    assert ds.value_range == (None, None)
    validate_batch(ds)  # no pixel range for features, only finiteness
    tab = _write(tmp_path / "t.parquet", {"id": list(range(8)), "label": [0, 1] * 4, "age": rng.integers(0, 90, 8),
                                          "income": rng.normal(size=8), "split": ["train"] * 6 + ["test"] * 2})
    t = load_parquet(tab)
    assert t.kind == "features" and t.values.shape == (8, 2) and t.meta["columns"] == ["age", "income"]


def test_parquet_pred_probs_need_no_model(tmp_path):
    probs = np.random.default_rng(2).dirichlet(np.ones(3), 9)
    p = _write(tmp_path / "p.parquet", {"id": [f"p{i}" for i in range(9)], "label": [0, 1, 2] * 3,
                                        "pred_probs": pa.array(list(probs), pa.list_(pa.float64()))})
    ds = load_parquet(p)
    assert ds.kind == "probs" and ds.values.shape == (9, 0) and np.allclose(ds.pred_probs, probs)
    back = batches.from_table(batches.to_table(ds, "b"))  # the lake keeps them exactly
    assert back.kind == "probs" and np.array_equal(back.pred_probs, ds.pred_probs)
    bad = _write(tmp_path / "bad.parquet", {"id": ["a", "b"], "label": [0, 1],
                                            "pred_probs": pa.array([[0.5, 0.5], [1.0, 0.0]], pa.list_(pa.float64()))})
    with pytest.raises(ValueError, match="rows have 2 values; the class set has 3"):
        load_parquet(bad, classes=ClassSpec(count=3))


def test_lake_round_trip_keeps_uint8_and_reads_old_float_parts(tmp_path):
    ds = load_parquet(_write(tmp_path / "u.parquet", {
        "id": ["a", "b", "c"], "label": [0, 1, 0],
        "image": pa.array([np.full((2, 2), v, np.uint8).tolist() for v in (0, 128, 255)],
                          pa.list_(pa.list_(pa.uint8())))}))
    table = batches.to_table(ds, "k")
    assert table.column("pixels").type == pa.binary(4)  # one byte per pixel in the lake
    back = batches.from_table(table)
    assert back.values.dtype == np.uint8 and np.array_equal(back.values, ds.values)
    assert back.content_hash() == ds.content_hash()
    old = table.drop_columns(["pixels"]).append_column(  # a part written before: float32 bytes per row
        "pixels", pa.array([r.astype("<f4").tobytes() for r in ds.x.reshape(3, -1)], pa.binary()))
    meta = dict(table.schema.metadata)
    import json
    m = json.loads(meta[b"winnow"])
    m.pop("dtype")
    old = old.replace_schema_metadata({"winnow": json.dumps(m)})
    assert np.allclose(batches.from_table(old).x, ds.x)


# ---------------------------------------------------------------- the class set


def _refusal(tmp_path, labels, spec=ClassSpec(), n_per=3) -> str:
    rng = np.random.default_rng(3)
    n = len(labels)
    p = _write(tmp_path / "c.parquet", {"id": [f"r{i}" for i in range(n)], "label": labels,
                                        "features": pa.array(list(rng.normal(size=(n, 4)).astype(np.float32)),
                                                             pa.list_(pa.float32()))})
    with pytest.raises(ValidationFailed) as err:
        validate_batch(load_parquet(p, classes=spec))
    assert len(err.value.failures) == 1, err.value.failures
    return err.value.failures[0]


def test_a_label_outside_the_declared_set_is_refused_by_name(tmp_path):
    line = _refusal(tmp_path, [0, 1, 2] * 3 + [57], ClassSpec(count=3))
    assert "expect_column_values_to_be_in_set(label" in line and "'57'" in line


def test_an_integer_label_gap_is_refused_when_inferred(tmp_path):
    line = _refusal(tmp_path, [0, 1, 2] * 3 + [57, 57])
    assert "gaps: 3..56 never appear" in line


def test_fractional_and_garbage_labels_are_refused(tmp_path):
    assert "'3.5'" in _refusal(tmp_path, pa.array([0.0, 1.0, 2.0] * 3 + [3.5]))
    assert "'%%'" in _refusal(tmp_path, ["0", "1", "2"] * 3 + ["%%"])


def test_a_name_that_is_not_declared_is_refused(tmp_path):
    line = _refusal(tmp_path, ["cat", "dog"] * 3 + ["cta"], ClassSpec(names=("cat", "dog")))
    assert "'cta'" in line


def test_a_single_class_and_a_too_small_class_are_refused(tmp_path):
    assert "at least 2" in _refusal(tmp_path, [0] * 6)
    line = _refusal(tmp_path, ["a"] * 5 + ["b"] * 5 + ["c"], ClassSpec(min_samples=2))
    assert "fewer than 2 samples: 'c' (1)" in line


def test_class_spec_parse_and_mapping():
    assert ClassSpec.parse("cat, dog").names == ("cat", "dog")
    with pytest.raises(ValueError, match="at least 2"):
        ClassSpec.parse("cat")
    with pytest.raises(ValueError, match="twice"):
        ClassSpec.parse("a,b,a")
    m = map_labels(["dog", "1", "0", "bird"], ClassSpec(names=("cat", "dog")))
    assert m.label.tolist() == [1, 1, 0, -1]  # names or indices; unknown -> -1 for the suite to name
    assert map_labels([0, 1, 1], ClassSpec(), "x").class_names == ["0", "1"]


def test_the_file_metadata_declares_the_classes(tmp_path):
    p = _write(tmp_path / "m.parquet", {"id": ["a", "b", "c", "d"], "label": [0, 1, 0, 4],
                                        "features": pa.array([[1.0]] * 4, pa.list_(pa.float32()))},
               {"class_names": "t-shirt,trouser,pullover"})
    ds = load_parquet(p)
    assert ds.class_names == ["t-shirt", "trouser", "pullover"] and ds.label.tolist() == [0, 1, 0, -1]


# ---------------------------------------------------------------- model fit, backbone, export plan


def test_the_model_must_fit_the_data():
    check_fits("cnn", "images", (3, 32, 32))
    check_fits("mlp", "features", (512,))
    with pytest.raises(ValueError, match="--model cnn needs images .* --shape C,H,W"):
        check_fits("cnn", "features", (784,))
    with pytest.raises(ValueError, match="H, W >= 4"):
        check_fits("cnn", "images", (1, 2, 2))


@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_a_backbone_exported_from_a_random_network_loads_with_torch_alone(tmp_path, fmt):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten()).eval()
    x = np.random.default_rng(0).random((5, 3, 8, 8), dtype=np.float32)
    path = tmp_path / ("enc.pt2" if fmt == "export" else "enc.ts")
    if fmt == "export":
        batch = torch.export.Dim("batch", min=1)
        torch.export.save(torch.export.export(net, (torch.as_tensor(x[:2]),), dynamic_shapes=({0: batch},)), path)
    else:
        torch.jit.save(torch.jit.trace(net, torch.as_tensor(x[:2])), path)
    feats = embed(load_encoder(path), x, batch_size=2)
    assert feats.shape == (5, 16)
    np.testing.assert_allclose(feats, net(torch.as_tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    (tmp_path / "junk.pt2").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt2: not a torch.export .pt2 program nor a TorchScript file"):
        load_encoder(tmp_path / "junk.pt2")


def test_the_export_plan_applies_decisions():
    ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    labels = np.array([0, 1, 1, 0, 1])
    queue = pd.DataFrame({"sample_id": ["a", "b", "c"], "status": ["dropped", "relabelled", "accepted"],
                          "new_label": [-1, 0, -1]})
    flags = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "suggested_label": [1, 0, 0, 1]})
    plan = plan_cleaning(ids, labels, ["n", "p"], queue, flags)
    assert plan.keep.tolist() == [False, True, True, True, True]
    assert plan.label.tolist() == [0, 0, 1, 0, 1] and plan.provenance[1] == "relabelled from p"
    flagged = plan_cleaning(ids, labels, ["n", "p"], queue, flags, drop="flagged")
    assert flagged.keep.tolist() == [False, True, True, False, True]  # d: flagged, nobody decided
    fixed = plan_cleaning(ids, labels, ["n", "p"], queue, flags, relabel="flagged")
    assert fixed.label.tolist() == [0, 0, 1, 1, 1] and fixed.counts() == {"rows": 5, "kept": 4, "dropped": 1,
                                                                          "relabelled": 2, "soft": 0}
    # soft: the undecided flag (d) gets its suggestion and its argmax; the other undecided rows (e)
    # half their label, half the suggestion (soft-all); reviewed rows (b, c) stay hard
    suggestion = np.array([[0.2, 0.8], [0.9, 0.1], [0.7, 0.3], [0.35, 0.65], [0.6, 0.4]])
    soft = plan_cleaning(ids, labels, ["n", "p"], queue, flags, relabel="soft", suggestion=suggestion)
    assert soft.label.tolist() == fixed.label.tolist() and soft.keep.tolist() == fixed.keep.tolist()
    assert [s is None for s in soft.soft] == [False, True, True, False, False]
    np.testing.assert_allclose(soft.soft[3], [0.35, 0.65])
    np.testing.assert_allclose(soft.soft[4], [0.3, 0.7])  # label p: ([0, 1] + [0.6, 0.4]) / 2
    assert soft.soft[3].dtype == np.float32
    assert soft.provenance[3] == "soft target, given n" and soft.provenance[1] == "relabelled from p"
    assert soft.provenance[4] == "kept"
    assert soft.counts() == {"rows": 5, "kept": 4, "dropped": 1, "relabelled": 1, "soft": 2}
    with pytest.raises(ValueError, match="stored no suggestion distributions .* --relabel flagged"):
        plan_cleaning(ids, labels, ["n", "p"], queue, flags, relabel="soft")
    with pytest.raises(ValueError, match=r"suggestion must have shape \(5, 2\)"):
        plan_cleaning(ids, labels, ["n", "p"], queue, flags, relabel="soft", suggestion=suggestion[:4])
    with pytest.raises(ValueError, match="suggestion must be probabilities"):
        plan_cleaning(ids, labels, ["n", "p"], queue, flags, relabel="soft", suggestion=suggestion * 2)
    with pytest.raises(ValueError, match="--drop must be one of"):
        plan_cleaning(ids, labels, ["n", "p"], queue, flags, drop="all")
