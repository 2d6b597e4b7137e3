"""A user's Parquet file, read column-wise with Arrow (never row by row in Python).

One row per sample: an id (``sample_id`` or ``id``), a label column (``label`` or ``--label-column``),
an optional ``split`` (train/test; otherwise a hash of the id holds out ``test_fraction``), and the
sample in one of these forms, looked for in this order:

``pred_probs``
    list<float> of length K: the user's own out-of-sample probabilities; nothing is trained.
``features``
    list<float> (or fixed_size_list): a feature vector, e.g. an embedding from any model.
``image`` / ``pixels`` / ``png``
    encoded image bytes (JPEG, PNG, WebP, ...), or a fixed-shape (nested) array of uint8 0..255
    or floats in [0, 1]; a flat array takes its shape from ``--shape C,H,W`` or the file's
    metadata key ``shape``.
plain numeric columns
    every other int/float column is one feature (tabular data).

The class set comes from ``--classes``/``--num-classes``, else the metadata keys ``class_names``
(JSON list or comma-separated) or ``num_classes``, else it is inferred (:mod:`.classes`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .classes import ClassSpec, map_labels
from .dataset import Dataset, deterministic_split
from .images import decode_all

ID_COLUMNS = ("sample_id", "id")
IMAGE_COLUMNS = ("image", "pixels", "png")
PROBS_COLUMN = "pred_probs"
FEATURES_COLUMN = "features"
RESERVED = ("split", "file", "winnow_provenance")


def _metadata(schema) -> dict:
    raw = schema.metadata or {}
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}


def metadata_classes(meta: dict) -> tuple[list[str] | None, int | None]:
    """Class names / count from a file's key-value metadata (``class_names``, ``num_classes``)."""
    names = None
    if meta.get("class_names"):
        text = meta["class_names"].strip()
        try:
            names = [str(c) for c in json.loads(text)] if text.startswith("[") else [c.strip() for c in text.split(",")]
        except json.JSONDecodeError:
            names = None
    count = int(meta["num_classes"]) if meta.get("num_classes", "").strip().isdigit() else None
    if not names and "winnow" in meta:  # a file winnow exported itself
        try:
            names = json.loads(meta["winnow"]).get("class_names")
        except (json.JSONDecodeError, AttributeError):
            names = None
    return names or None, count


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"3,32,32"`` -> ``(3, 32, 32)`` (the CLI's ``--shape``)."""
    if not text:
        return None
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"--shape must be integers like C,H,W, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"--shape must be positive integers like C,H,W, got {text!r}")
    return shape


def _list_values(column, path: Path, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """A (nested) list column as one array of shape (n, *inner), checking every row has the same shape."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    inner: list[int] = []
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if arr.null_count:
            row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{path}: column '{name}' row {row} is null")
        if pa.types.is_fixed_size_list(arr.type):
            width = arr.type.list_size
            arr = arr.flatten()
        else:
            offsets = arr.offsets.to_numpy()
            lengths = np.diff(offsets)
            width = int(lengths[0]) if len(lengths) else 0
            bad = np.flatnonzero(lengths != width)
            if len(bad):
                raise ValueError(f"{path}: column '{name}' holds arrays of different lengths "
                                 f"(row {int(bad[0]) if not inner else '?'}: {int(lengths[bad[0]])} vs {width})")
            arr = arr.flatten()
        inner.append(width)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        raise ValueError(f"{path}: column '{name}' holds {arr.type} values; expected numbers")
    if arr.null_count:
        raise ValueError(f"{path}: column '{name}' has a null element")
    values = arr.to_numpy(zero_copy_only=False)
    return values.reshape(n, *inner), tuple(inner)


def _is_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_binary(t) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _encoded_images(path: Path, name: str, ids: np.ndarray, batch_rows: int = 1024):
    """A callable returning a fresh iterator over the column's image bytes, read one record batch
    at a time (for :func:`~.images.decode_all`, which reads them twice); a null is refused with its
    row and id."""
    import pyarrow.parquet as pq

    def images():
        row = 0
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(columns=[name], batch_size=batch_rows):
            column = batch.column(0)
            if column.null_count:
                at = row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise ValueError(f"{path}: column '{name}' row {at} (id {ids[at]}) is null")
            yield from column.to_pylist()
            row += len(column)

    return images


def _leaf_type(t):
    """The element type of a (nested) list type."""
    while _is_list(t):
        t = t.value_type
    return t


def _stream_list(path: Path, name: str, n: int, batch_rows: int = 65536, dtype=None,
                 spill_dir: Path | None = None) -> tuple[np.ndarray, tuple[int, ...]]:
    """A list column read one record batch at a time into one preallocated array, so peak
    memory is the array plus one batch (not the Arrow column, its combined copy and the array).

    ``dtype``: each batch is cast to it (default: as stored). ``spill_dir``: the array is a
    ``.npy`` file written there batch by batch and returned memory-mapped (read-only), so the
    set never sits in this process's memory; the caller owns (and removes) the folder.
    """
    import pyarrow.parquet as pq

    out, inner, row, fh = None, (), 0, None
    try:
        # pre_buffer off: with it (pyarrow's default) the reader kept every row group it had read —
        # 2.3 GB resident after iterating a 1.9 GB file's column, 0.6 GB peak without
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(columns=[name], batch_size=batch_rows):
            part, part_inner = _list_values(batch.column(0), path, name)
            part = part if dtype is None else part.astype(dtype, copy=False)
            if row == 0 and out is None and fh is None:
                inner = part_inner
                if spill_dir is None:
                    out = np.empty((n, *part_inner), dtype=part.dtype)
                else:
                    spill = Path(spill_dir) / f"{name}.npy"
                    fh = open(spill, "wb")
                    np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(part.dtype),
                                                              "fortran_order": False, "shape": (n, *part_inner)})
            elif part_inner != inner:
                raise ValueError(f"{path}: column '{name}' holds arrays of different shapes ({inner} from row 0, "
                                 f"{part_inner} near row {row})")
            if row + len(part) > n:
                raise ValueError(f"{path}: column '{name}' has more rows than the file's {n}")
            if fh is not None:
                fh.write(np.ascontiguousarray(part).data)
            else:
                out[row:row + len(part)] = part
            row += len(part)
    finally:
        if fh is not None:
            fh.close()
    if row != n:
        raise ValueError(f"{path}: column '{name}' has {row} rows, the file {n}")
    if fh is not None:
        return np.load(Path(spill_dir) / f"{name}.npy", mmap_mode="r"), inner
    return out, inner


def _pixels(values: np.ndarray, integer: bool) -> np.ndarray:
    """Integer pixels in 0..255 become uint8; wider integers stay float (validation then refuses
    them as out of range instead of wrapping them silently)."""
    if integer:
        if values.size == 0 or (values.min() >= 0 and values.max() <= 255):
            return values.astype(np.uint8)
        return values.astype(np.float32) / np.float32(255.0)
    return values.astype(np.float32, copy=False)


def load_parquet(path: str | Path, test_fraction: float = 0.2, name: str | None = None,
                 classes: ClassSpec = ClassSpec(), shape: tuple[int, ...] | None = None,
                 image_size: tuple[int, int] | None = None, label_column: str = "label",
                 spill_dir: Path | None = None) -> Dataset:
    """Read a user's Parquet file into a :class:`Dataset` (see the module docstring for the forms).

    Nothing is clipped or guessed silently: out-of-range values and labels outside the class set
    are kept (labels as -1 with their raw text) for the batch suite to refuse with one line each.

    ``spill_dir`` (an existing folder the caller removes): ``features`` and uint8/float image
    arrays are written there as a ``.npy`` file and the Dataset's ``values`` map it, so a large
    set is read without holding it in memory.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: file not found")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; --dataset parquet needs a .parquet file (images: --dataset images)")
    try:
        schema = pq.read_schema(path)
        # the big list columns are streamed into one array below, and encoded images decoded a
        # batch at a time: neither is read whole here
        listed = [c for c in (PROBS_COLUMN, FEATURES_COLUMN, *IMAGE_COLUMNS) if c in schema.names
                  and _is_list(schema.field(c).type)]
        encoded = [c for c in IMAGE_COLUMNS if c in schema.names and _is_binary(schema.field(c).type)]
        table = pq.read_table(path, columns=[c for c in schema.names if c not in listed + encoded])
    except Exception as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc.__class__.__name__})") from None
    cols = schema.names
    meta = _metadata(table.schema)
    id_col = next((c for c in ID_COLUMNS if c in cols), None)
    if id_col is None:
        raise ValueError(f"{path}: no id column (expected one of {list(ID_COLUMNS)}; found {cols})")
    if label_column not in cols:
        raise ValueError(f"{path}: no '{label_column}' column (found {cols})")
    n = table.num_rows
    if n == 0:
        raise ValueError(f"{path}: no rows")

    id_arr = table.column(id_col)
    if id_arr.null_count:
        row = int(np.flatnonzero(id_arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: column '{id_col}' has null ids (row {row})")
    ids = np.asarray(id_arr.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)

    label_arr = table.column(label_column)
    if label_arr.null_count:
        row = int(np.flatnonzero(label_arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: column '{label_column}' has nulls (row {row}, id {ids[row]})")
    spec = classes.merged_with_metadata(*metadata_classes(meta))
    source = "declared" if classes.declared else "metadata"
    mapping = map_labels(label_arr.to_numpy(zero_copy_only=False), spec, source)

    pred_probs = None
    value_range: tuple = (0.0, 1.0)
    info: dict = {}
    if PROBS_COLUMN in cols:
        probs, inner = _stream_list(path, PROBS_COLUMN, n)
        if len(inner) != 1 or inner[0] != len(mapping.class_names):
            raise ValueError(f"{path}: column '{PROBS_COLUMN}' rows have {inner[0] if inner else 0} values; the class "
                             f"set has {len(mapping.class_names)} ({mapping.source})")
        pred_probs = probs.astype(np.float64)
        values = np.zeros((n, 0), dtype=np.float32)
        form = "pred_probs"
    elif FEATURES_COLUMN in cols:
        values, inner = _stream_list(path, FEATURES_COLUMN, n, dtype=np.float32, spill_dir=spill_dir)
        if shape:
            values = _reshape(values, shape, path, FEATURES_COLUMN)
        else:
            values = values.reshape(n, -1)
            value_range = (None, None)
        form = "features"
    elif (img_col := next((c for c in IMAGE_COLUMNS if c in cols), None)) is not None:
        if img_col in encoded:
            values, info = decode_all(_encoded_images(path, img_col, ids),
                                      lambda i: f"{path}: column '{img_col}' row {i} (id {ids[i]})", image_size, n=n,
                                      spill=Path(spill_dir) / f"{img_col}.npy" if spill_dir is not None else None)
            form = "encoded images"
        else:
            if img_col not in listed:
                raise ValueError(f"{path}: column '{img_col}' holds {schema.field(img_col).type}; expected encoded "
                                 f"image bytes or a (nested) list of numbers")
            leaf = _leaf_type(schema.field(img_col).type)
            if pa.types.is_uint8(leaf) or pa.types.is_floating(leaf):  # cast row by row: may be spilled
                values, inner = _stream_list(path, img_col, n, dtype=None if pa.types.is_uint8(leaf) else np.float32,
                                             spill_dir=spill_dir)
            else:  # wider integers: uint8 or not is decided on the whole column (see _pixels)
                raw, inner = _stream_list(path, img_col, n)
                values = _pixels(raw, raw.dtype.kind in "iu")
            file_shape = parse_shape(meta.get("shape"))
            target = shape or (file_shape if len(inner) == 1 else None)
            if target:
                values = _reshape(values, target, path, img_col)
            elif values.ndim == 3:
                values = values[:, None]  # (n, H, W) -> one channel
            elif values.ndim == 2:
                raise ValueError(f"{path}: column '{img_col}' holds flat arrays of {inner[0]} values; give their "
                                 f"shape with --shape C,H,W (or the file's metadata key 'shape'), or name the "
                                 f"column 'features' for vectors")
            form = "arrays"
    else:
        numeric = [c for c in cols if c not in (id_col, label_column, *RESERVED)
                   and (pa.types.is_integer(table.schema.field(c).type) or pa.types.is_floating(table.schema.field(c).type))]
        if not numeric:
            raise ValueError(f"{path}: no sample column: expected '{PROBS_COLUMN}', '{FEATURES_COLUMN}', one of "
                             f"{list(IMAGE_COLUMNS)}, or numeric feature columns (found {cols})")
        for c in numeric:
            if table.column(c).null_count:
                row = int(np.flatnonzero(table.column(c).is_null().to_numpy(zero_copy_only=False))[0])
                raise ValueError(f"{path}: column '{c}' row {row} (id {ids[row]}) is null")
        values = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in numeric], 1)
        value_range = (None, None)
        form = "numeric columns"
        info = {"columns": numeric}

    if "split" in cols:
        split = np.asarray(table.column("split").cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
        bad = sorted({str(s) for s in set(split)} - {"train", "test"})
        if bad:
            raise ValueError(f"{path}: column 'split' has values {bad[:5]}; expected 'train' or 'test'")
    else:
        split = deterministic_split(ids, test_fraction)
    return Dataset(name or path.stem, ids, values, mapping.label, split, mapping.class_names, value_range,
                   meta={"source": str(path.resolve()), "form": form, "id_column": id_col,
                         "label_column": label_column, "classes_source": mapping.source,
                         "class_problems": mapping.problems, **info},
                   pred_probs=pred_probs, raw_label=mapping.raw)


def _reshape(values: np.ndarray, shape: tuple[int, ...], path: Path, column: str) -> np.ndarray:
    per_row = int(np.prod(values.shape[1:]))
    if int(np.prod(shape)) != per_row:
        raise ValueError(f"{path}: column '{column}' rows have {per_row} values; shape {','.join(map(str, shape))} "
                         f"needs {int(np.prod(shape))}")
    return values.reshape(len(values), *shape)
