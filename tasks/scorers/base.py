"""The scorer contract: one small abstract base, one registry, one signature.

A scorer answers "how likely is this training sample's given label wrong?" with one float per
sample, higher = more suspicious. Every scorer receives the same :class:`TrainingContext`; the
expensive shared pieces (loading checkpoints, logits at every checkpoint, out-of-sample
probabilities by K-fold training) live on the context, computed once and reused by all scorers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ..models.rows import Rows
from ..models.training import Checkpoint, TrainConfig, TrainResult, default_device, predict_logits, train_model


@dataclass
class TrainingContext:
    """Everything a scorer may use. Pure data: no files, no Prefect, no MLflow.

    Attributes
    ----------
    x : torch.Tensor, shape (n, *sample_shape), float32
        Training inputs. Built from a :class:`Rows` that streams (a memory-mapped file), ``x`` is
        materialised only when a scorer first reads it; training, the out-of-sample folds and the
        checkpoint logits (``loss``, ``aum``, ``margin``, ``confident``...) read :attr:`rows`, one
        batch at a time, and never do.
    y : torch.Tensor, shape (n,), int64
        Given (possibly noisy) labels.
    num_classes : int
    model_factory : callable
        Returns an untrained model of the audited architecture.
    checkpoints : list[Checkpoint]
        One per epoch of the audited training run, oldest first.
    train_config : TrainConfig
        The recipe that produced the checkpoints (scorers that retrain reuse it).
    sample_ids : np.ndarray, shape (n,), str
        Stable ids (turn-over dropout derives masks from them).
    seed : int
    kfold : int
        Folds for out-of-sample probabilities.
    """

    x: torch.Tensor = field(repr=False)  # no repr: it would read a streaming context's whole set
    y: torch.Tensor
    num_classes: int
    model_factory: Callable[[], nn.Module]
    checkpoints: list[Checkpoint]
    train_config: TrainConfig
    sample_ids: np.ndarray
    seed: int = 0
    kfold: int = 4
    device: torch.device = field(default_factory=default_device)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.x, Rows) and not self.x.in_memory:
            self.rows = self.x
            del self.x  # read on first use (see __getattr__): most scorers never need it
        else:
            self.x = torch.as_tensor(self.x.materialize() if isinstance(self.x, Rows) else self.x,
                                     dtype=torch.float32)
            self.rows = Rows(self.x)
        self.y = torch.as_tensor(self.y, dtype=torch.long)
        n = len(self.rows)
        if len(self.y) != n or len(self.sample_ids) != n:
            raise ValueError(f"x, y and sample_ids must have the same length, got {n}, {len(self.y)}, {len(self.sample_ids)}")
        if n and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")

    def __getattr__(self, name: str):
        # Only reached when normal lookup fails: `x` of a streaming context, on first use.
        if name == "x" and "rows" in self.__dict__:
            self.x = self.rows.materialize()
            return self.x
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def from_probabilities(cls, probs: np.ndarray, labels: np.ndarray, sample_ids: np.ndarray,
                           config: TrainConfig | None = None) -> "TrainingContext":
        """A context over the user's own out-of-sample probabilities: no model, no checkpoints.

        The probabilities stand in for the final model's outputs (as log-probabilities, which the
        loss and margin scorers read) and for the out-of-sample probabilities (confident learning).

        Parameters
        ----------
        probs : np.ndarray, shape (n, C)
            Rows in [0, 1] summing to 1 (within 1e-2; renormalised).
        labels : np.ndarray, shape (n,), int
        sample_ids : np.ndarray, shape (n,)
        """
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] < 2:
            raise ValueError(f"pred_probs must have shape (n, C) with C >= 2, got {probs.shape}")
        if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
            raise ValueError("pred_probs must be finite and lie in [0, 1]")
        sums = probs.sum(1)
        off = np.flatnonzero(np.abs(sums - 1) > 1e-2)
        if len(off):
            raise ValueError(f"pred_probs rows must sum to 1: row {int(off[0])} (id {sample_ids[off[0]]}) sums to "
                             f"{sums[off[0]]:.4f} ({len(off)} such rows)")
        probs = probs / sums[:, None]
        n, c = probs.shape
        ctx = cls(torch.zeros((n, 0)), labels, c, _no_model, [], config or TrainConfig(), np.asarray(sample_ids))
        ctx._cache["checkpoint_logits"] = torch.log(torch.as_tensor(probs).clamp_min(1e-12)).float()[None]
        ctx._cache["oos_probs"] = probs
        return ctx

    @property
    def n(self) -> int:
        return len(self.rows)

    def model_at(self, index: int = -1) -> nn.Module:
        """A fresh model loaded with checkpoint ``index`` (eval mode, on ``device``)."""
        if not self.checkpoints:
            raise ValueError("this scorer needs the training checkpoints, and the context has none")
        model = self.model_factory()
        model.load_state_dict(self.checkpoints[index].state)
        return model.to(self.device).eval()

    def checkpoint_logits(self) -> torch.Tensor:
        """Training-set logits at every checkpoint, shape (T, n, C); computed once."""
        if "checkpoint_logits" not in self._cache:
            self._cache["checkpoint_logits"] = torch.stack(
                [predict_logits(self.model_at(t), self.rows, device=self.device) for t in range(len(self.checkpoints))]
            )
        return self._cache["checkpoint_logits"]

    def final_logits(self) -> torch.Tensor:
        """Training-set logits of the last checkpoint, shape (n, C): ``checkpoint_logits()[-1]``,
        computed alone (one pass over the rows, not one per checkpoint) unless those are known."""
        if "checkpoint_logits" in self._cache:
            return self._cache["checkpoint_logits"][-1]
        return predict_logits(self.model_at(-1), self.rows, device=self.device)

    def train(self, x=None, y=None, config: TrainConfig | None = None, **kwargs) -> TrainResult:
        """Train the audited recipe (defaults: this context's data and config)."""
        return train_model(self.model_factory, self.rows if x is None else x, self.y if y is None else y,
                           config or self.train_config, device=self.device, **kwargs)

    def folds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The K-fold split of :meth:`out_of_sample_probs`: (fit, held) row positions per fold,
        stratified by given label, seeded (``kfold`` lowered to the smallest class's count, min 2)."""
        from sklearn.model_selection import StratifiedKFold

        y = self.y.numpy()
        counts = np.bincount(y, minlength=self.num_classes)
        k = int(min(self.kfold, max(2, counts[counts > 0].min())))
        return list(StratifiedKFold(k, shuffle=True, random_state=self.seed).split(np.zeros(self.n), y))

    def fold_probs(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """Train fold ``fold`` of :meth:`folds` and predict its held-out rows.

        Folds are independent (each its own seed), so they can run anywhere, in any order.

        Returns
        -------
        held : np.ndarray, shape (m,), int64 — row positions
        probs : np.ndarray, shape (m, C), float64
        """
        plan = self.folds()
        if not 0 <= fold < len(plan):
            raise ValueError(f"fold must lie in [0, {len(plan)}), got {fold}")
        fit, held = plan[fold]
        cfg = replace(self.train_config, seed=self.train_config.seed + 1000 * (fold + 1))
        result = self.train(self.rows.subset(fit), self.y[fit], cfg, keep_checkpoints=False)
        probs = torch.softmax(predict_logits(result.model, self.rows.subset(held)), 1).double().numpy()
        return held.astype(np.int64), probs

    def out_of_sample_probs(self, on_fold: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Predicted probabilities for each sample from a model that never saw it.

        K-fold cross-fitting with the audited recipe (:meth:`folds`, :meth:`fold_probs`).
        ``on_fold(done, total)`` is called after each fold (progress for long runs).

        Returns
        -------
        np.ndarray, shape (n, C), float64
        """
        if "oos_probs" not in self._cache:
            k = len(self.folds())
            probs = np.zeros((self.n, self.num_classes))
            for fold in range(k):
                held, p = self.fold_probs(fold)
                probs[held] = p
                if on_fold:
                    on_fold(fold + 1, k)
            self._cache["oos_probs"] = probs
        return self._cache["oos_probs"]


def _no_model():
    raise ValueError("this scorer needs a trained model; on given pred_probs only the probability scorers run "
                     "(see `winnow scorers`)")


class Scorer(ABC):
    """Base class: subclasses set ``name`` and implement :meth:`score`."""

    name: ClassVar[str]
    #: one line for ``winnow run --help`` and the docs
    summary: ClassVar[str] = ""
    #: False for scorers that read only the final outputs and the out-of-sample probabilities, so
    #: they also run on a user's own ``pred_probs`` with no model trained
    needs_model: ClassVar[bool] = True
    #: True for scorers that read nothing of the model but :meth:`TrainingContext.checkpoint_logits`
    #: (and the labels), so stored logits, computed once in shards, serve them
    reads_checkpoint_logits: ClassVar[bool] = False

    def __init__(self, **options):
        self.options = options

    @abstractmethod
    def score(self, ctx: TrainingContext) -> np.ndarray:
        """Return shape (n,) float scores, higher = more likely mislabelled."""

    def __call__(self, ctx: TrainingContext) -> np.ndarray:
        scores = np.asarray(self.score(ctx), dtype=np.float64).reshape(-1)
        if scores.shape != (ctx.n,):
            raise ValueError(f"scorer {self.name!r} returned {scores.shape[0]} scores for {ctx.n} samples")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"scorer {self.name!r} returned non-finite scores")
        return scores


_REGISTRY: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer selectable by ``cls.name``."""
    if not getattr(cls, "name", None):
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"scorer name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """A scorer with options, as the CLI writes it: ``name[:key=value[:key=value ...]]``.

    ``"influence:variant=ekfac"`` -> ``("influence", {"variant": "ekfac"})``;
    ``"ensemble:members=aum+representer:rounds=2"`` (``+`` joins a list, since ``,`` separates
    scorers). Values stay strings; each scorer parses and validates its own options.
    """
    name, *pairs = str(spec).strip().split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"scorer option {pair!r} in {spec!r} is not key=value (form: name:key=value:key=value)")
        options[key.strip()] = value.strip()
    return name.strip(), options


def scorer_class(name: str) -> type[Scorer]:
    """The class of a scorer name (or spec with options)."""
    base = split_spec(name)[0]
    if base not in _REGISTRY:
        raise ValueError(f"unknown scorer {base!r}; available: {', '.join(available())}")
    return _REGISTRY[base]


def get_scorer(name: str, **options) -> Scorer:
    """An instance of a scorer name or spec (``"influence:variant=ekfac"``); ``options`` win."""
    return scorer_class(name)(**{**split_spec(name)[1], **options})


#: the recommended detector first: it ranks the flags (and, for arrivals, the review queue)
RECOMMENDED = "knn-aum-lf"
PROBABILITY_SCORERS = "loss,margin,confident"  # what runs on given pred_probs (no model, no dynamics)


def default_scorers(data_kind: str, noise: str) -> str:
    """The scorers a run uses when ``--scorers`` is not given; the first ranks the flags.
    Graded runs (injected noise) add ``random``, the floor every figure is read against."""
    if data_kind == "probs":
        return PROBABILITY_SCORERS
    return f"{RECOMMENDED},loss,confident" + (",random" if noise != "none" else "")


def probability_scorers() -> list[str]:
    """Scorers that run on given probabilities alone (no model, no checkpoints)."""
    return [n for n in available() if not _REGISTRY[n].needs_model]



def parse_scorer_list(spec: str | list[str]) -> list[str]:
    """``"loss,confident"`` -> ``["loss", "confident"]``, validated against the registry; an entry
    may carry options (``"influence:variant=ekfac"``, see :func:`split_spec`)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ValueError("--scorers is empty; give at least one of: " + ", ".join(available()))
    for n in names:
        if split_spec(n)[0] not in _REGISTRY:
            raise ValueError(f"unknown scorer {split_spec(n)[0]!r} in --scorers; available: {', '.join(available())}")
    if len(set(names)) != len(names):
        raise ValueError(f"--scorers lists a scorer twice: {names}")
    return names
