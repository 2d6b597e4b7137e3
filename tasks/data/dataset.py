"""The in-memory form of a labelled batch, shared by every stage."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "test")


@dataclass
class Dataset:
    """A labelled batch of fixed-shape samples.

    Attributes
    ----------
    name : str
        Source name (``digits``, ``fashion-mnist``, a file stem, ...).
    sample_id : np.ndarray, shape (n,), dtype object (str)
        Unique, non-null identifiers.
    x : np.ndarray, shape (n, C, H, W) or (n, C, L), float32
        Pixel (or signal) values; images are scaled to [0, 1].
    label : np.ndarray, shape (n,), int64
        Given labels in ``[0, num_classes)``.
    split : np.ndarray, shape (n,), dtype object
        ``"train"`` or ``"test"``; the test split is never noised.
    class_names : list[str]
        One name per class; ``num_classes == len(class_names)``.
    value_range : tuple[float, float]
        The range every value must lie in (checked by validation).
    """

    name: str
    sample_id: np.ndarray
    x: np.ndarray
    label: np.ndarray
    split: np.ndarray
    class_names: list[str]
    value_range: tuple[float, float] = (0.0, 1.0)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.sample_id)
        for attr in ("x", "label", "split"):
            if len(getattr(self, attr)) != n:
                raise ValueError(
                    f"Dataset {self.name!r}: {attr} has {len(getattr(self, attr))} rows, sample_id has {n}"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.sample_id)

    def subset(self, mask: np.ndarray) -> "Dataset":
        return Dataset(
            self.name,
            self.sample_id[mask],
            self.x[mask],
            self.label[mask],
            self.split[mask],
            list(self.class_names),
            self.value_range,
            dict(self.meta),
        )

    def content_hash(self) -> str:
        """A hash of everything that defines the batch: same content, same hash."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update("\x00".join(map(str, self.sample_id)).encode())
        h.update(np.ascontiguousarray(self.label, dtype=np.int64).tobytes())
        h.update("\x00".join(map(str, self.split)).encode())
        h.update(np.ascontiguousarray(self.x, dtype=np.float32).tobytes())
        h.update(repr((self.sample_shape, self.class_names, self.value_range)).encode())
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
