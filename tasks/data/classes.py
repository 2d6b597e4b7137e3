"""The class set: declared (``--classes``, ``--num-classes``, the file's metadata, the stream's
accepted data) or, failing that, inferred under rules strict enough to catch a typo.

Readers turn raw label values into class indices here and nothing else does. A value that is not
in the class set gets index -1 and keeps its raw text, so the batch suite (GX) can refuse it and
name it; nothing is silently turned into a new class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: a class needs at least this many samples (K-fold out-of-sample probabilities need some in every fold)
MIN_CLASS_SAMPLES = 2


@dataclass(frozen=True)
class ClassSpec:
    """What the user declared about the class set (all optional).

    Attributes
    ----------
    names : tuple of str, optional
        The class names, in index order (``--classes a,b,c``); labels may be names or indices.
    count : int, optional
        The number of classes (``--num-classes N``); labels must be integers in ``[0, N)``.
    min_samples : int
        Fewest samples a class may have.
    """

    names: tuple[str, ...] | None = None
    count: int | None = None
    min_samples: int = MIN_CLASS_SAMPLES

    def __post_init__(self) -> None:
        if self.names is not None:
            if len(self.names) < 2:
                raise ValueError(f"--classes needs at least 2 names, got {list(self.names)}")
            dup = sorted({n for n in self.names if list(self.names).count(n) > 1})
            if dup:
                raise ValueError(f"--classes names a class twice: {dup}")
            if self.count is not None and self.count != len(self.names):
                raise ValueError(f"--num-classes {self.count} disagrees with --classes ({len(self.names)} names)")
        if self.count is not None and self.count < 2:
            raise ValueError(f"--num-classes must be at least 2, got {self.count}")
        if self.min_samples < 1:
            raise ValueError(f"the minimum samples per class must be positive, got {self.min_samples}")

    @classmethod
    def parse(cls, classes: str | None = None, num_classes: int | None = None,
              min_samples: int = MIN_CLASS_SAMPLES) -> "ClassSpec":
        """From the CLI's ``--classes a,b,c`` / ``--num-classes N``."""
        names = tuple(c.strip() for c in classes.split(",")) if classes else None
        if names is not None and any(not n for n in names):
            raise ValueError(f"--classes has an empty name: {classes!r}")
        return cls(names, num_classes, min_samples)

    @property
    def declared(self) -> bool:
        return self.names is not None or self.count is not None

    def merged_with_metadata(self, names: list[str] | None, count: int | None) -> "ClassSpec":
        """The CLI's declaration wins; the file's metadata fills in what it left open."""
        if self.declared or (names is None and count is None):
            return self
        return ClassSpec(tuple(names) if names else None, count if not names else None, self.min_samples)


@dataclass
class LabelMapping:
    """Raw labels mapped onto a class set.

    Attributes
    ----------
    label : np.ndarray, shape (n,), int64
        Class index, -1 where the raw value is not in the class set.
    raw : np.ndarray, shape (n,), object (str)
        The raw values as text (what a refusal names).
    class_names : list of str
    source : str
        How the set was decided: ``declared``, ``metadata`` or ``inferred ...`` (printed by the run).
    problems : list of str
        Reasons the set itself is unusable (gaps in inferred integer labels); the suite refuses them.
    """

    label: np.ndarray
    raw: np.ndarray
    class_names: list[str]
    source: str
    problems: list[str]


def _as_text(values) -> np.ndarray:
    out = []
    for v in values:
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            out.append(str(int(v)))
        elif isinstance(v, bytes):
            out.append(v.decode("utf-8", "replace"))
        else:
            out.append(str(v).strip())
    return np.array(out, dtype=object)


def _int_or_none(text: str) -> int | None:
    t = text[1:] if text.startswith("-") else text
    return int(text) if t.isdigit() else None


def map_labels(values, spec: ClassSpec = ClassSpec(), source: str = "declared") -> LabelMapping:
    """Map raw label values (ints, integer-valued floats or strings) onto a class set.

    Parameters
    ----------
    values : sequence, length n
        Raw labels as read (non-null; readers refuse nulls first).
    spec : ClassSpec
        The declared set. With names: a value must be a name or an index into them. With a count
        ``N``: a value must be an integer in ``[0, N)``. With neither, the set is inferred:
        integer labels give classes ``0..max`` and must have no gaps; string labels give their
        sorted distinct values; fractional numbers and strings among integers are refused.
    source : str
        Recorded as the mapping's source when the spec declares the set (``declared``/``metadata``).

    Returns
    -------
    LabelMapping
    """
    raw = _as_text(values)
    n = len(raw)
    ints = np.array([_int_or_none(t) if t else None for t in raw], dtype=object)
    is_int = np.array([i is not None for i in ints], dtype=bool)
    label = np.full(n, -1, dtype=np.int64)
    problems: list[str] = []
    if spec.names is not None:
        names = list(spec.names)
        lookup = {name: i for i, name in enumerate(names)}
        for row, text in enumerate(raw):
            if text in lookup:
                label[row] = lookup[text]
            elif is_int[row] and 0 <= ints[row] < len(names):
                label[row] = ints[row]
        return LabelMapping(label, raw, names, source, problems)
    if spec.count is not None:
        ok = is_int & np.array([i is not None and 0 <= i < spec.count for i in ints], dtype=bool)
        label[ok] = [ints[r] for r in np.flatnonzero(ok)]
        return LabelMapping(label, raw, [str(c) for c in range(spec.count)], source, problems)
    # inferred
    if n and is_int.mean() >= 0.5:
        ok = is_int & np.array([i is not None and i >= 0 for i in ints], dtype=bool)
        present = sorted({ints[r] for r in np.flatnonzero(ok)})
        top = present[-1] if present else -1
        label[ok] = [ints[r] for r in np.flatnonzero(ok)]
        missing = sorted(set(range(top + 1)) - set(present))
        if missing:
            problems.append(f"integer labels have gaps: {_ranges(missing)} never appear among 0..{top} "
                            f"(declare the class set with --classes or --num-classes if that is intended)")
        return LabelMapping(label, raw, [str(c) for c in range(top + 1)], f"inferred: integers 0..{top}", problems)
    names = sorted(set(raw))
    lookup = {name: i for i, name in enumerate(names)}
    label = np.array([lookup[t] for t in raw], dtype=np.int64)
    return LabelMapping(label, raw, names, f"inferred: {len(names)} distinct names", problems)


def _ranges(values: list[int]) -> str:
    spans, start = [], values[0]
    for a, b in zip(values, values[1:] + [None]):
        if b != a + 1:
            spans.append(str(start) if start == a else f"{start}..{a}")
            start = b
    return ", ".join(spans[:4]) + (" ..." if len(spans) > 4 else "")
