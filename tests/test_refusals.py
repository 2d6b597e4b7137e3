"""A corpus of bad inputs and options, each refused the same way: exit code 2, the cause as the
last line on stderr, no traceback, the lake untouched.

The cases run ``main()`` in-process against the session's real Prefect server (a flow run per
case that gets as far as a flow; seconds each); ``test_refusal_through_the_real_cli`` runs one
through the installed command with its own temporary Prefect server, as a user would.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import prefect.main  # noqa: F401 - sets up Prefect's logging now, not inside a test whose captured stderr then closes
import pyarrow as pa
import pytest
from PIL import Image

from helpers import digits_parquet, write_idx
from winnow.flows.cli import main

N = 60  # rows per bad file: enough for a batch, small enough to read in milliseconds


def lake_checksum(home: Path) -> str:
    """sha256 over every file under the lake (relative path + bytes)."""
    h = hashlib.sha256()
    lake = home / "lake"
    for f in sorted(lake.rglob("*")) if lake.exists() else []:
        if f.is_file():
            h.update(str(f.relative_to(lake)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _set(column: str, fn) -> Callable:
    """A ``digits_parquet`` mutation replacing one column by ``fn(old values)``."""
    def mutate(cols):
        cols[column] = fn(cols[column])
        return cols
    return mutate


def _drop(column: str) -> Callable:
    def mutate(cols):
        del cols[column]
        return cols
    return mutate


def _image_rows(fn) -> Callable:
    """Replace the image column by python lists made by ``fn(row, image as float list)``."""
    def mutate(cols):
        imgs = cols["image"].to_pylist()
        cols["image"] = pa.array([fn(i, np.asarray(im, dtype=np.float64) / 255.0) for i, im in enumerate(imgs)])
        return cols
    return mutate


@dataclass
class Case:
    name: str
    make: Callable[[Path], list[str]]  # writes the bad input under tmp, returns the CLI args
    expect: tuple[str, ...]  # substrings of the last stderr line


def parquet_case(name, mutate, *expect, png=False):
    def make(tmp: Path) -> list[str]:
        path = digits_parquet(tmp / f"{name}.parquet", n=N, png=png, mutate=mutate)
        return ["run", "--dataset", "parquet", "--path", str(path)]
    return Case(name, make, expect)


def file_case(name, content: bytes, *expect, suffix=".parquet"):
    def make(tmp: Path) -> list[str]:
        path = tmp / f"{name}{suffix}"
        path.write_bytes(content)
        return ["run", "--dataset", "parquet", "--path", str(path)]
    return Case(name, make, expect)


def _truncated(tmp: Path) -> list[str]:
    good = digits_parquet(tmp / "whole.parquet", n=N)
    path = tmp / "truncated.parquet"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return ["run", "--dataset", "parquet", "--path", str(path)]


def _folder(tmp: Path) -> list[str]:
    (tmp / "a-folder").mkdir()
    (tmp / "a-folder" / "notes.txt").write_text("not data\n")
    return ["run", "--dataset", "parquet", "--path", str(tmp / "a-folder")]


def _images_case(name, mutate_dir, *expect):
    """A flat folder of 8x8 PNGs with a labels.csv, then ``mutate_dir(folder)``."""
    def make(tmp: Path) -> list[str]:
        d = tmp / name
        d.mkdir()
        rng = np.random.default_rng(0)
        for i in range(6):
            (d / f"{i}.png").write_bytes(_png(rng.integers(0, 256, (8, 8)).astype(np.uint8)))
        (d / "labels.csv").write_text("file,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(6)))
        mutate_dir(d)
        return ["run", "--dataset", "images", "--path", str(d)]
    return Case(name, make, expect)


def _idx_case(name, mutate_dir, *expect):
    def make(tmp: Path) -> list[str]:
        d = tmp / name
        rng = np.random.default_rng(0)
        for prefix in ("train", "t10k"):
            write_idx(d, prefix, rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20))
        mutate_dir(d)
        return ["run", "--dataset", "fashion-mnist", "--path", str(d)]
    return Case(name, make, expect)


def _idx_wrong_magic(d: Path):
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 1234, 20, 28, 28) + bytes(20 * 28 * 28))


def _idx_missing(d: Path):
    (d / "t10k-labels-idx1-ubyte.gz").unlink()


def _idx_count_mismatch(d: Path):
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 2049, 19) + bytes(19))


def _option_case(name, args, *expect):
    return Case(name, lambda tmp: list(args), expect)


def _unreadable_values(cols):
    imgs = [[[str(v) for v in row] for row in im] for im in cols["image"].to_pylist()]
    imgs[7][0][0] = "pixel0"
    cols["image"] = pa.array(imgs)
    return cols


def _labels(values) -> Callable:
    return _set("label", lambda old: pa.array(values(len(old))))


CASES = [
    # files that are not (readable) Parquet
    Case("missing-file", lambda tmp: ["run", "--dataset", "parquet", "--path", str(tmp / "nowhere.parquet")],
         ("nowhere.parquet", "no such file")),
    file_case("empty-file", b"", "empty-file.parquet", "not a readable Parquet file"),
    Case("truncated-file", _truncated, ("truncated.parquet", "not a readable Parquet file")),
    file_case("csv-named-parquet", b"id,label,image\nu0,1,0 0 0\n", "csv-named-parquet.parquet", "not a readable Parquet"),
    file_case("png-file", _png(np.zeros((8, 8), np.uint8)), "png-file.png", "not a readable Parquet", suffix=".png"),
    Case("folder-instead-of-file", _folder, ("a-folder",)),
    # schema
    parquet_case("no-id-column", _drop("id"), "no id column"),
    parquet_case("no-label-column", _drop("label"), "no 'label' column"),
    parquet_case("no-image-column", _drop("image"), "no sample column"),
    parquet_case("zero-rows", lambda c: {k: (v[:0] if isinstance(v, pa.Array) else v[:0]) for k, v in c.items()},
                 "no rows"),
    # nulls
    parquet_case("null-id", _set("id", lambda old: [None if i == 5 else v for i, v in enumerate(old)]),
                 "null ids", "row 5"),
    parquet_case("null-label", _set("label", lambda old: [None if i == 9 else v for i, v in enumerate(old)]),
                 "'label' has nulls", "row 9"),
    parquet_case("null-image", _set("image", lambda old: pa.array([None if i == 3 else v for i, v in
                                                                  enumerate(old.to_pylist())])),
                 "'image' row 3", "is null"),
    # types and values
    parquet_case("unreadable-pixel-string", _unreadable_values, "column 'image'", "string values"),
    parquet_case("pixel-above-range", _image_rows(lambda i, im: (im * (2.0 if i == 4 else 1.0)).tolist()),
                 "pixel_max"),
    parquet_case("negative-pixel", _image_rows(lambda i, im: (im - (0.5 if i == 2 else 0.0)).tolist()),
                 "pixel_min"),
    parquet_case("nan-pixel", _image_rows(lambda i, im: np.where(np.arange(im.size).reshape(im.shape) == 0,
                                                                 np.nan if i == 1 else im, im).tolist()),
                 "n_nonfinite"),
    parquet_case("infinite-pixel", _image_rows(lambda i, im: np.where(np.arange(im.size).reshape(im.shape) == 0,
                                                                      np.inf if i == 1 else im, im).tolist()),
                 "n_nonfinite"),
    parquet_case("negative-label", _labels(lambda n: [-1] + [i % 10 for i in range(1, n)]), "label"),
    parquet_case("label-outside-class-set", _labels(lambda n: [11] + [i % 10 for i in range(1, n)]), "label", "11"),
    parquet_case("fractional-label", _labels(lambda n: [0.5] + [float(i % 10) for i in range(1, n)]), "label", "0.5"),
    parquet_case("garbage-string-label", _labels(lambda n: ["cat?!"] + [str(i % 10) for i in range(1, n)]),
                 "label", "cat?!"),
    parquet_case("single-class", _labels(lambda n: [3] * n), "label"),
    parquet_case("bad-split-value", lambda c: {**c, "split": ["train"] * (N - 1) + ["validation"]},
                 "'split'", "validation"),
    # shapes
    parquet_case("ragged-image-shapes", _image_rows(lambda i, im: (im[:4] if i == 6 else im).tolist()),
                 "column 'image'", "row 6"),
    # duplicates
    parquet_case("duplicate-ids", _set("id", lambda old: ["u0" if i == 8 else v for i, v in enumerate(old)]),
                 "sample_id", "unique"),
    # encodings
    parquet_case("corrupt-png-bytes", _set("image", lambda old: pa.array(
        [b"\x89PNG\r\n\x1a\nbroken" if i == 2 else v for i, v in enumerate(old.to_pylist())])),
        "row 2", "not a readable image", png=True),
    # image folders with a labels.csv (--dataset images)
    _images_case("labels-csv-latin-1", lambda d: (d / "labels.csv").write_bytes(
        "file,label\n".encode() + "".join(f"{i}.png,caf\u00e9{i % 2}\n" for i in range(6)).encode("latin-1")),
        "labels.csv", "not a readable CSV"),
    _images_case("image-file-truncated", lambda d: (d / "3.png").write_bytes((d / "3.png").read_bytes()[:30]),
                 "3.png", "not a readable image"),
    _images_case("text-file-named-png", lambda d: (d / "4.png").write_text("hello, not an image\n"),
                 "4.png", "not a readable image"),
    _images_case("labels-csv-names-a-missing-image", lambda d: (d / "5.png").unlink(), "row 7", "'5.png' not found"),
    # Fashion-MNIST IDX folders
    _idx_case("idx-wrong-magic", _idx_wrong_magic, "not an IDX image file", "magic 1234"),
    _idx_case("idx-missing-file", _idx_missing, "t10k-labels-idx1-ubyte", "file not found"),
    _idx_case("idx-count-mismatch", _idx_count_mismatch, "20 images but 19 labels"),
    # options that parse but cannot work
    _option_case("unknown-scorer", ["run", "--scorers", "loss,bogus"], "unknown scorer 'bogus'"),
    _option_case("parquet-without-path", ["run", "--dataset", "parquet"], "--path"),
]


@pytest.fixture(scope="module")
def populated_home(tmp_path_factory, prefect_server):
    """A WINNOW_HOME whose lake already holds a committed batch and a metrics part."""
    import pandas as pd

    from winnow.tasks import batches, lake
    from winnow.tasks.data.sources import load_digits

    home = tmp_path_factory.mktemp("refusals-home")
    old = os.environ.get("WINNOW_HOME")
    os.environ["WINNOW_HOME"] = str(home)
    batches.commit(batches.stage(load_digits(limit=200)))
    lake.write("metrics", pd.DataFrame({"run_id": ["r0"], "scorer": ["loss"], "name": ["auroc"], "value": [0.9]}))
    yield home
    if old is None:
        os.environ.pop("WINNOW_HOME")
    else:
        os.environ["WINNOW_HOME"] = old


def test_the_corpus_has_at_least_25_kinds():
    assert len({c.name for c in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_cleanly(case, populated_home, tmp_path, capfd):
    args = case.make(tmp_path)
    before = lake_checksum(populated_home)
    capfd.readouterr()
    code = main([*args, "--epochs", "1", "--scorers", "loss"] if "--scorers" not in args else [*args, "--epochs", "1"])
    err = capfd.readouterr().err
    last = err.strip().splitlines()[-1]
    with capfd.disabled():
        print(f"\n{case.name}: {last}")  # the corpus' report (pytest -s shows it)
    assert code == 2, err[-2000:]
    assert last.startswith("winnow run: error: "), err[-2000:]
    for fragment in case.expect:
        assert fragment in last, f"{fragment!r} not in last line {last!r}"
    assert "Traceback" not in err
    assert lake_checksum(populated_home) == before


def test_bad_option_values_are_refused_by_the_parser(capsys):
    for args, fragment in ((["run", "--rate", "1.5"], "must lie in [0, 1)"),
                           (["run", "--limit", "0"], "must be a positive integer"),
                           (["run", "--noise", "loud"], "invalid choice: 'loud'"),
                           (["run", "--seed", "x"], "invalid int value: 'x'")):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert fragment in err.strip().splitlines()[-1] and "Traceback" not in err


def test_debug_shows_the_traceback(populated_home, tmp_path, capfd):
    path = digits_parquet(tmp_path / "no-label.parquet", n=N, mutate=_drop("label"))
    capfd.readouterr()
    assert main(["--debug", "run", "--dataset", "parquet", "--path", str(path), "--scorers", "loss"]) == 2
    err = capfd.readouterr().err
    os.environ.pop("WINNOW_DEBUG", None)
    assert "Traceback" in err
    assert "no 'label' column" in err.strip().splitlines()[-1]
    # and the Prefect UI shows the refused run as Failed, with the cause as its message
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        latest = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)[0]
    assert latest.state.is_failed() and "no 'label' column" in latest.state.message


def test_unexpected_errors_keep_their_traceback_and_say_how_to_report(tmp_path, capfd, monkeypatch):
    """A bug is anything that is not a refusal: a command that raises RuntimeError stands in for one."""
    from winnow.flows import cli

    def broken(args):
        raise RuntimeError("something winnow did not foresee")

    monkeypatch.setitem(cli.COMMANDS, "scorers", broken)
    capfd.readouterr()
    assert main(["scorers"]) == 3
    err = capfd.readouterr().err
    assert "Traceback" in err
    last = err.strip().splitlines()[-1]
    assert "internal error: RuntimeError: something winnow did not foresee" in last and "report" in last


@pytest.mark.slow
def test_refusal_through_the_real_cli(tmp_path):
    """As a user runs it: own temporary Prefect server, a batch that fails validation. The cause is
    the last line (after Prefect's "Stopping temporary server" and its log shipping), no traceback."""
    path = digits_parquet(tmp_path / "bad.parquet", n=N, mutate=_set("id", lambda old: ["u0"] * len(old)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "WINNOW_"))}
    env.update(WINNOW_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", TQDM_DISABLE="1")
    out = subprocess.run([sys.executable, "-m", "winnow.flows.cli", "run", "--dataset", "parquet", "--path", str(path)],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert lines[-1].startswith("winnow run: error: ") and "sample_id" in lines[-1], lines[-5:]
    assert "Traceback" not in out.stderr
    assert any("Stopping temporary server" in ln for ln in lines[:-1])
    assert "Error logging to API" not in out.stderr
    assert not (tmp_path / "home" / "lake" / "samples").exists()
