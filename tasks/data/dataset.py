"""The in-memory form of a labelled batch, shared by every stage."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .blocks import model_inputs, row_blocks

SPLITS = ("train", "test")
#: what one row holds: pixels (C, H, W), a signal (C, L), a feature vector (D,), or nothing but the
#: user's own out-of-sample probabilities (``pred_probs``; no model is trained).
KINDS = ("images", "signals", "features", "probs")
IMAGE_KINDS = ("images",)


def kind_of(values: np.ndarray, pred_probs: np.ndarray | None = None) -> str:
    """The data kind a value array implies: (n, C, H, W) images, (n, C, L) signals, (n, D) features."""
    if pred_probs is not None and values.size == 0:
        return "probs"
    return {4: "images", 3: "signals", 2: "features"}.get(values.ndim, "features")


@dataclass
class Dataset:
    """A labelled batch of fixed-shape samples.

    Attributes
    ----------
    name : str
        Source name (``digits``, ``fashion-mnist``, a file stem, ...).
    sample_id : np.ndarray, shape (n,), dtype object (str)
        Unique, non-null identifiers.
    values : np.ndarray, shape (n, C, H, W), (n, C, L), (n, D) or (n, 0)
        The samples as they came: uint8 pixels 0..255, or float32 (pixels in [0, 1], signals,
        features). Kept in their own dtype so the lake stores 1 byte per uint8 pixel.
    label : np.ndarray, shape (n,), int64
        Given labels in ``[0, num_classes)``.
    split : np.ndarray, shape (n,), dtype object
        ``"train"`` or ``"test"``; the test split is never noised.
    class_names : list[str]
        One name per class; ``num_classes == len(class_names)``.
    value_range : tuple[float, float]
        The range every model input (``x``) must lie in (checked by validation); ``None`` bounds
        are open (features).
    meta : dict
        Free-form provenance (the source file, the input form, how the class set was decided);
        ``meta["per_row"]`` maps names to one value per row (e.g. the source files), kept aligned
        by :meth:`subset`.
    pred_probs : np.ndarray, shape (n, num_classes), float, optional
        The user's own out-of-sample probabilities (kind ``probs``).
    kind : str
        One of :data:`KINDS`; inferred from ``values`` when not given.
    raw_label : np.ndarray, shape (n,), object (str), optional
        The labels as the source wrote them; where ``label`` is -1 (not in the class set) this is
        what validation names when it refuses the row.
    """

    name: str
    sample_id: np.ndarray
    values: np.ndarray
    label: np.ndarray
    split: np.ndarray
    class_names: list[str]
    value_range: tuple[float | None, float | None] = (0.0, 1.0)
    meta: dict = field(default_factory=dict)
    pred_probs: np.ndarray | None = None
    kind: str = ""
    raw_label: np.ndarray | None = None
    _x: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.sample_id)
        for attr in ("values", "label", "split"):
            if len(getattr(self, attr)) != n:
                raise ValueError(
                    f"Dataset {self.name!r}: {attr} has {len(getattr(self, attr))} rows, sample_id has {n}"
                )
        if self.pred_probs is not None and self.pred_probs.shape != (n, len(self.class_names)):
            raise ValueError(f"Dataset {self.name!r}: pred_probs has shape {self.pred_probs.shape}, "
                             f"expected ({n}, {len(self.class_names)})")
        self.kind = self.kind or kind_of(self.values, self.pred_probs)
        if self.kind not in KINDS:
            raise ValueError(f"Dataset {self.name!r}: unknown kind {self.kind!r}; one of {KINDS}")

    @property
    def x(self) -> np.ndarray:
        """Model inputs, float32: uint8 pixels scaled to [0, 1], float values as they are (no copy)."""
        if self._x is None:
            self._x = model_inputs(self.values)
        return self._x

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])

    def __len__(self) -> int:
        return len(self.sample_id)

    def replace(self, **changes) -> "Dataset":
        """A copy with some attributes changed (labels relabelled, classes extended, ...)."""
        fields = {k: getattr(self, k) for k in ("name", "sample_id", "values", "label", "split", "class_names",
                                                "value_range", "meta", "pred_probs", "kind", "raw_label")}
        fields["meta"] = dict(self.meta)
        fields.update(changes)
        return Dataset(**fields)

    def subset(self, mask: np.ndarray) -> "Dataset":
        meta = dict(self.meta)
        if "per_row" in meta:
            meta["per_row"] = {k: np.asarray(v, dtype=object)[mask].tolist() for k, v in meta["per_row"].items()}
        return self.replace(meta=meta, sample_id=self.sample_id[mask], values=self.values[mask], label=self.label[mask],
                            split=self.split[mask], class_names=list(self.class_names),
                            pred_probs=None if self.pred_probs is None else self.pred_probs[mask],
                            raw_label=None if self.raw_label is None else self.raw_label[mask])

    def content_hash(self, value_blocks: Iterable[np.ndarray] | None = None) -> str:
        """A hash of everything that defines the batch: same content, same hash.

        ``value_blocks``: the values, a block of rows at a time, where :attr:`values` does not hold
        them (a stored part read without its values column: ``winnow doctor``); same digest."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update("\x00".join(map(str, self.sample_id)).encode())
        h.update(np.ascontiguousarray(self.label, dtype=np.int64).tobytes())
        h.update("\x00".join(map(str, self.split)).encode())
        h.update(str(self.values.dtype).encode())
        # a block at a time: a memory-mapped set is not pulled into memory whole (same digest)
        for block in (row_blocks(self.values) if value_blocks is None else value_blocks):
            h.update(np.ascontiguousarray(block).reshape(-1).view(np.uint8).data)  # no copy when contiguous
        if self.pred_probs is not None:
            h.update(np.ascontiguousarray(self.pred_probs, dtype=np.float64).tobytes())
        h.update(repr((self.sample_shape, self.class_names, tuple(self.value_range), self.kind)).encode())
        return h.hexdigest()[:16]


def deterministic_split(sample_id: np.ndarray, test_fraction: float, salt: str = "winnow") -> np.ndarray:
    """Assign train/test from a hash of each id, so a sample keeps its split across batches.

    Returns
    -------
    np.ndarray, shape (n,), dtype object
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    u = np.array(
        [int.from_bytes(hashlib.blake2b(f"{salt}:{s}".encode(), digest_size=8).digest(), "little") for s in sample_id],
        dtype=np.uint64,
    )
    frac = u.astype(np.float64) / float(2**64)
    return np.where(frac < test_fraction, "test", "train").astype(object)
