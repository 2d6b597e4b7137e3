"""Ingest, validate and commit a block at a time (issue 13): a large batch is never in memory
whole, and the results are the same as reading it whole (values, batch id, GX failures, lake bytes)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.tasks import arrays, batches, lake
from winnow.tasks.data import blocks
from winnow.tasks.data.classes import ClassSpec
from winnow.tasks.data.tables import load_parquet
from winnow.tasks.validation import ValidationFailed, validate_batch, value_summaries


def _features_file(path, n=300, dim=16, seed=0, nan_row=None, label_values=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    if nan_row is not None:
        x[nan_row, 3] = np.nan
    labels = label_values if label_values is not None else rng.integers(0, 3, n)
    table = pa.table({"id": [f"s{i}" for i in range(n)], "label": pa.array(labels, pa.int64()),
                      "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)})
    pq.write_table(table, path, row_group_size=64)  # several row groups, read batch by batch
    return x


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so a 300-row batch is hashed, written and checked in many pieces."""
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 40 * 16 * 4)  # 40 rows of 16 float32


def test_a_spilled_column_equals_the_one_read_into_memory(fresh_home, tmp_path, small_blocks):
    path = tmp_path / "f.parquet"
    x = _features_file(path)
    whole = load_parquet(path)
    with arrays.spill_folder() as spill:
        mapped = load_parquet(path, spill_dir=spill)
        assert isinstance(mapped.values, np.memmap) and str(spill) in str(mapped.values.filename)
        np.testing.assert_array_equal(mapped.values, x)
        assert mapped.content_hash() == whole.content_hash()  # hashed in blocks: the same batch id
        batch_id = batches.stage(mapped)
        assert arrays.adopt(mapped.values, batch_id) == arrays.array_path(batch_id)
    assert not spill.exists()  # the folder goes, the adopted array stays
    np.testing.assert_array_equal(arrays.open_mapped(batch_id), x)
    # a reshaped view is not the file's array: not adopted
    with arrays.spill_folder() as spill:
        mapped = load_parquet(path, spill_dir=spill)
        assert arrays.adopt(mapped.values.reshape(300, 4, 4), "other") is None


def test_a_batch_staged_and_committed_in_blocks_reads_back_the_same(fresh_home, tmp_path, small_blocks):
    path = tmp_path / "f.parquet"
    _features_file(path)
    ds = load_parquet(path)
    batch_id = batches.stage(ds)
    staged = batches.staging_path(batch_id)
    assert pq.ParquetFile(staged).num_row_groups == 8  # 300 rows, 40 per block
    back = batches.load_staged(batch_id)
    np.testing.assert_array_equal(back.values, ds.values)
    assert back.content_hash() == batch_id
    assert batches.from_table(batches.to_table(ds, batch_id)).content_hash() == batch_id
    light = batches.load_staged(batch_id, values=False)
    assert list(light.sample_id) == list(ds.sample_id) and light.values.shape == ds.values.shape
    np.testing.assert_array_equal(np.concatenate(list(batches.value_blocks(staged))), ds.values)

    part = batches.commit(batch_id)
    assert part.read_bytes() == staged.read_bytes()  # copied as it is, after its checksums were read

    # a bit flipped in a data page of the staged copy is caught on the way in
    part.unlink()
    blob = staged.read_bytes()
    middle = len(blob) // 3
    staged.write_bytes(blob[:middle] + bytes([blob[middle] ^ 0x10]) + blob[middle + 1:])
    with pytest.raises(lake.CorruptFile, match=str(staged)):
        batches.commit(batch_id)
    assert not part.exists() and not list(part.parent.glob("*.tmp"))


def test_validation_a_row_group_at_a_time_names_the_same_failures(fresh_home, tmp_path, small_blocks):
    path = tmp_path / "bad.parquet"
    labels = np.arange(300) % 3
    labels[250] = 7  # not in the declared 3 classes
    _features_file(path, nan_row=201, label_values=labels)  # the NaN sits in the 6th block
    ds = load_parquet(path, classes=ClassSpec(count=3))
    with pytest.raises(ValidationFailed) as whole:
        validate_batch(ds)
    batch_id = batches.stage(ds)
    light = batches.load_staged(batch_id, values=False)
    summaries = value_summaries(batches.value_blocks(batches.staging_path(batch_id)), len(light))
    with pytest.raises(ValidationFailed) as streamed:
        validate_batch(light, summaries=summaries)
    assert streamed.value.failures == whole.value.failures
    assert any(f.startswith("expect_column_values_to_be_in_set(n_nonfinite") for f in streamed.value.failures)
    assert any("'7'" in f for f in streamed.value.failures)
    # the summaries of the blocks are those of the whole array
    for a, b in zip(summaries, value_summaries([ds.values], len(ds))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="declared 301"):
        value_summaries(blocks.row_blocks(ds.values), 301)


def test_row_blocks_cover_every_row_once_and_drop_mapped_pages(tmp_path):
    x = np.arange(1000 * 8, dtype=np.float32).reshape(1000, 8)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    parts = list(np.array(b) for b in blocks.row_blocks(mapped, rows=300))
    assert [len(p) for p in parts] == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.concatenate(parts), x)
    assert blocks.mmap_of(mapped) is not None and blocks.mmap_of(x) is None
    with pytest.raises(ValueError, match="rows must be positive"):
        next(blocks.row_blocks(x, rows=-1))


@pytest.mark.slow
def test_scorers_on_logits_stored_in_shards_equal_those_computed_at_once(prefect_server, fresh_home, tmp_path,
                                                                        monkeypatch):
    """The audit stores the checkpoint logits in shards (here 128 rows each, so 600 rows make 5,
    the last one short) and loss/aum/margin read them: the scores are those of one pass."""
    from winnow.flows.audit import audit
    from winnow.tasks import artifacts, stages
    from winnow.tasks.scorers import get_scorer

    monkeypatch.setattr(stages, "LOGIT_SHARD_ROWS", 128)
    path = tmp_path / "f.parquet"
    _features_file(path, n=600)
    result = audit(dataset="parquet", path=str(path), scorers="loss,aum,margin,confident", epochs=2)
    names = [r["name"] for r in result.stages]
    assert names.count("checkpoint-logits") == 5 and "checkpoint-logits-merge" in names
    ctx, data, _ = stages.load_context(result.run_id)  # nothing stored: computed here, in one pass
    for name in ("loss", "aum", "margin"):
        stored = artifacts.load_frame("scores", artifacts.key_of("score", result.run_id, name))["score"].to_numpy()
        np.testing.assert_array_equal(stored, get_scorer(name)(ctx))
    assert stages.logit_shards(0) == [(0, 0)] and stages.logit_shards(300, 256) == [(0, 256), (256, 300)]
    with pytest.raises(ValueError, match="multiple of 128"):
        stages.logit_shards(300, 100)
