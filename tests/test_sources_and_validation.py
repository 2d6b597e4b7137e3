import numpy as np
import pyarrow as pa
import pytest

from helpers import digits_parquet, write_idx
from winnow.tasks.data.sources import load_digits, load_fashion_mnist, load_parquet, load_source
from winnow.tasks.validation import ValidationFailed, validate_batch


def test_digits_default_has_a_stable_held_out_split():
    a, b = load_digits(), load_digits()
    assert len(a) == 1797 and a.x.shape[1:] == (1, 8, 8)
    assert 0.0 <= a.x.min() and a.x.max() <= 1.0
    assert np.array_equal(a.split, b.split)
    assert 0.2 < (a.split == "test").mean() < 0.3
    assert a.content_hash() == b.content_hash()


def test_fashion_mnist_reader_on_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path, "train", rng.integers(0, 256, (50, 28, 28)), rng.integers(0, 10, 50))
    write_idx(tmp_path, "t10k", rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20))
    ds = load_fashion_mnist(tmp_path)
    assert len(ds) == 70 and (ds.split == "test").sum() == 20
    assert ds.x.shape[1:] == (1, 28, 28) and ds.x.max() <= 1.0
    assert ds.class_names[0] == "T-shirt/top"


def test_fashion_mnist_missing_dir_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_fashion_mnist(tmp_path / "nowhere")


@pytest.mark.parametrize("png", [False, True])
def test_parquet_arrays_and_png_bytes_decode_to_the_same_images(tmp_path, png):
    ds = load_parquet(digits_parquet(tmp_path / "d.parquet", n=100, png=png))
    ref = load_parquet(digits_parquet(tmp_path / "ref.parquet", n=100, png=False))
    assert ds.x.shape == (100, 1, 8, 8)
    np.testing.assert_allclose(ds.x, ref.x)
    assert ds.x.max() <= 1.0 and ds.label.tolist() == ref.label.tolist()
    assert set(ds.split) == {"train", "test"}


def test_same_parquet_content_gives_the_same_batch_hash(tmp_path):
    a = load_parquet(digits_parquet(tmp_path / "a.parquet", n=50))
    b = load_parquet(digits_parquet(tmp_path / "b.parquet", n=50))
    c = load_parquet(digits_parquet(tmp_path / "c.parquet", n=51))
    assert a.content_hash() != c.content_hash()
    # same bytes under another file name: the name is part of the batch (it names the data set)
    assert load_parquet(tmp_path / "a.parquet").content_hash() == a.content_hash()
    assert b.x.shape == a.x.shape


@pytest.mark.parametrize("drop,message", [("id", "no id column"), ("label", "no 'label' column"),
                                          ("image", "no sample column")])
def test_parquet_missing_columns_are_named(tmp_path, drop, message):
    def mutate(cols):
        cols.pop(drop)
        return cols
    with pytest.raises(ValueError, match=message):
        load_parquet(digits_parquet(tmp_path / "bad.parquet", n=10, mutate=mutate))


def test_parquet_corrupt_png_names_the_row(tmp_path):
    def mutate(cols):
        blobs = cols["image"].to_pylist()
        blobs[3] = b"not a png"
        cols["image"] = pa.array(blobs, type=pa.binary())
        return cols
    with pytest.raises(ValueError, match="row 3"):
        load_parquet(digits_parquet(tmp_path / "bad.parquet", n=10, png=True, mutate=mutate))


def test_validation_passes_a_good_batch():
    report = validate_batch(load_digits())
    assert report.success and len(report.results) >= 9


def test_validation_rejects_a_bad_batch_with_one_line_per_failure(tmp_path):
    def mutate(cols):
        cols["id"][5] = cols["id"][6]  # duplicate id
        cols["label"][7] = 42  # label outside the class set observed in metadata
        return cols
    path = digits_parquet(tmp_path / "bad.parquet", n=200, mutate=mutate)
    ds = load_parquet(path)
    ds.x[9, 0, 0, 0] = np.nan
    with pytest.raises(ValidationFailed) as err:
        validate_batch(ds, class_count=10)
    failures = err.value.failures
    text = "\n".join(failures)
    assert len(failures) == 3, text
    assert "expect_column_values_to_be_unique(sample_id)" in text and "u6" in text
    assert "expect_column_values_to_be_in_set(label" in text and "42" in text
    assert "n_nonfinite" in text


def test_validation_rejects_out_of_range_pixels(tmp_path):
    def mutate(cols):
        cols["image"] = pa.array([[[2.0] * 8] * 8] * len(cols["id"]), type=pa.list_(pa.list_(pa.float32())))
        return cols
    ds = load_parquet(digits_parquet(tmp_path / "f.parquet", n=20, mutate=mutate))
    with pytest.raises(ValidationFailed, match="pixel_max"):
        validate_batch(ds)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_source("imagenet")
