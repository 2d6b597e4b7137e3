"""Images as they come: encoded files or bytes (JPEG, PNG, WebP, ...) of any size and channel
count, brought to one shape.

The rules, stated once:
- **Size**: ``size=(H, W)`` if given, otherwise the most common size in the batch (ties: the
  larger area); images of another size are resized with bilinear filtering (aspect not kept).
- **Channels**: grey (1 channel) if every image is grey, otherwise RGB (3 channels): grey images
  are repeated into three channels, palette images expanded, alpha and CMYK converted to RGB.
- Pixels stay uint8 0..255 (the models scale them to [0, 1]).

Folders: the ``ImageFolder`` layout (``root/<class>/<file>``, optionally under ``root/train`` and
``root/test``) or a flat folder with ``labels.csv`` (``file,label[,id][,split]``). Ids default to
the file's path relative to the root.
"""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LABEL_FILE = "labels.csv"
SPLIT_FOLDERS = ("train", "test")


def _opened(source: bytes | Path, where: str, decode: bool):
    """A PIL image (pixels decoded, or only the header read), or a one-line ``ValueError``
    naming ``where`` (file or row)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        if decode:
            img.load()
    except FileNotFoundError:
        raise ValueError(f"{where}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{where}: not a readable image ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    return img


def open_image(source: bytes | Path, where: str):
    """A decoded PIL image, or a one-line ``ValueError`` naming ``where`` (file or row)."""
    return _opened(source, where, decode=True)


def _is_grey(img) -> bool:
    return img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _to_mode(img, grey: bool):
    if grey:
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grey: scale to 0..255
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            from PIL import Image
            return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).round().astype(np.uint8))
        return img.convert("L")
    return img.convert("RGB")


def _as_row(img, grey: bool, target: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """One image as a (C, H, W) uint8 array of the target size; and whether it was resized."""
    from PIL import Image

    img = _to_mode(img, grey)
    resized = (img.height, img.width) != target
    if resized:
        img = img.resize((target[1], target[0]), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return (arr[None] if grey else np.moveaxis(arr, -1, 0)), resized


def decode_all(sources, where, size: tuple[int, int] | None = None, n: int | None = None,
               spill: Path | None = None) -> tuple[np.ndarray, dict]:
    """Decode encoded images and stack them, one image at a time (the rules: module docstring).

    Two passes: the headers first (each image's size and mode, to choose the common shape), then
    the pixels, each image decoded, converted and written to its row before the next is read. So
    memory holds the result (or, with ``spill``, nothing of it) and one image, never all the
    decoded images at once.

    Parameters
    ----------
    sources : sequence of bytes or paths, or a callable returning a fresh iterator over them
        (called twice; for a column read in batches, say)
    where : sequence of str, or callable ``i -> str``
        What names image ``i`` in an error (file path or ``file: row i``).
    size : (H, W), optional
        Target size; default the most common size (ties: the larger area).
    n : int, optional
        The number of images (default ``len(sources)``; needed when ``sources`` is a callable).
    spill : Path, optional
        Write the pixels to this ``.npy`` file (a row at a time) and return it memory-mapped,
        read-only; its folder must exist.

    Returns
    -------
    pixels : np.ndarray, shape (n, C, H, W), uint8
    info : dict
        ``size``, ``channels``, ``resized`` (count), for the run's provenance.
    """
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"--image-size must be two positive integers H,W, got {size}")
    read = sources if callable(sources) else (lambda: iter(sources))
    name = where if callable(where) else where.__getitem__
    n = len(sources) if n is None else n
    if n < 1:
        raise ValueError("no images to stack")
    sizes: Counter = Counter()
    grey, seen = True, 0
    for i, source in enumerate(read()):
        with _opened(source, name(i), decode=False) as img:  # the header only
            sizes[(img.height, img.width)] += 1
            grey = grey and _is_grey(img)
        seen += 1
    if seen != n:
        raise ValueError(f"{name(0)} ...: expected {n} images, read {seen}")
    target = tuple(size) if size else max(sizes, key=lambda s: (sizes[s], s[0] * s[1]))
    shape = (n, 1 if grey else 3, *target)
    out, fh, resized, written = None, None, 0, 0
    try:
        if spill is None:
            out = np.empty(shape, dtype=np.uint8)
        else:  # written row by row through a file, not a writable map: its pages would stay resident
            fh = open(spill, "wb")
            np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                      "fortran_order": False, "shape": shape})
        for i, source in enumerate(read()):
            if i >= n:
                raise ValueError(f"{name(0)} ...: the images changed between the two reads (more than {n})")
            with open_image(source, name(i)) as img:
                row, was_resized = _as_row(img, grey, target)
            resized += was_resized
            if fh is not None:
                fh.write(np.ascontiguousarray(row).data)
            else:
                out[i] = row
            written += 1
    finally:
        if fh is not None:
            fh.close()
    if written != n:
        raise ValueError(f"{name(0)} ...: the images changed between the two reads ({n}, then {written})")
    info = {"size": list(target), "channels": shape[1], "resized": resized}
    return (np.load(spill, mmap_mode="r") if spill is not None else out), info


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def scan_folder(root: Path) -> dict:
    """Find what an image folder holds, without decoding anything.

    Returns
    -------
    dict with ``files`` (relative paths), ``labels`` (raw label text), ``ids``, ``split`` (list or
    None) and ``layout`` (``labels.csv`` or ``class folders``).
    """
    import pandas as pd

    root = Path(root)
    if not root.exists():
        raise ValueError(f"{root}: no such folder")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (--dataset images needs a folder of images)")
    csv = root / LABEL_FILE
    if csv.is_file():
        try:
            table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except Exception as exc:
            raise ValueError(f"{csv}: not a readable CSV ({exc.__class__.__name__})") from None
        for col in ("file", "label"):
            if col not in table.columns:
                raise ValueError(f"{csv}: no '{col}' column (found {list(table.columns)})")
        if table.empty:
            raise ValueError(f"{csv}: no rows")
        for row, (f, label) in enumerate(zip(table["file"], table["label"])):
            if not f.strip():
                raise ValueError(f"{csv}: row {row + 2}: empty 'file'")
            if not label.strip():
                raise ValueError(f"{csv}: row {row + 2}: empty 'label' for {f!r}")
            if not (root / f.strip()).is_file():
                raise ValueError(f"{csv}: row {row + 2}: image {f.strip()!r} not found in {root}")
        files = [f.strip() for f in table["file"]]
        ids = [i.strip() for i in table["id"]] if "id" in table.columns else files
        split = [s.strip() for s in table["split"]] if "split" in table.columns else None
        return {"files": files, "labels": list(table["label"]), "ids": ids, "split": split, "layout": LABEL_FILE}
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise ValueError(f"{root}: neither a {LABEL_FILE} nor class folders (root/<class>/<image>)")
    split_roots = [(s, root / s) for s in SPLIT_FOLDERS if (root / s).is_dir()]
    if split_roots and {p.name for p in subdirs} <= set(SPLIT_FOLDERS):
        parts = split_roots
    else:
        parts = [(None, root)]
    files, labels, split = [], [], []
    for split_name, base in parts:
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(class_dir.rglob("*")):
                if is_image_file(f):
                    files.append(f.relative_to(root).as_posix())
                    labels.append(class_dir.name)
                    split.append(split_name)
    if not files:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return {"files": files, "labels": labels, "ids": list(files), "split": split if parts[0][0] else None,
            "layout": "class folders"}


def load_image_folder(root: str | Path, name: str | None = None, classes=None,
                      image_size: tuple[int, int] | None = None, test_fraction: float = 0.2,
                      spill_dir: Path | None = None):
    """An image folder (class folders or ``labels.csv``) as a :class:`~.dataset.Dataset`.

    Parameters
    ----------
    root : str or Path
    name : str, optional
        The data set's name (default: the folder's name).
    classes : ClassSpec, optional
        The declared class set; class folder names or the CSV's labels are mapped onto it.
    image_size : (H, W), optional
        Target size (default: the most common size).
    spill_dir : Path, optional
        An existing folder (the caller removes it): the pixels are decoded into a ``.npy`` file
        there and mapped, not held in memory.
    """
    from .classes import ClassSpec, map_labels
    from .dataset import Dataset, deterministic_split

    root = Path(root)
    found = scan_folder(root)
    spec = classes or ClassSpec()
    mapping = map_labels(found["labels"], spec, "declared")
    if not spec.declared and found["layout"] == "class folders":
        mapping.source = f"class folders ({len(mapping.class_names)})"
    where = [str(root / f) for f in found["files"]]
    pixels, info = decode_all([root / f for f in found["files"]], where, image_size,
                              spill=Path(spill_dir) / "pixels.npy" if spill_dir is not None else None)
    ids = np.array(found["ids"], dtype=object)
    if found["split"] is not None and all(s is not None for s in found["split"]):
        split = np.array(found["split"], dtype=object)
        bad = sorted(set(split) - {"train", "test"})
        if bad:
            raise ValueError(f"{root / LABEL_FILE}: column 'split' has values {bad[:5]}; expected 'train' or 'test'")
    else:
        split = deterministic_split(ids, test_fraction)
    return Dataset(name or root.name, ids, pixels, mapping.label, split, mapping.class_names,
                   meta={"source": str(root.resolve()), "form": found["layout"], "per_row": {"files": found["files"]},
                         "classes_source": mapping.source, "class_problems": mapping.problems, **info},
                   raw_label=mapping.raw)
