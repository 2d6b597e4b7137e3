"""The audit pipeline's Prefect tasks: thin wrappers that load artifacts, call a pure function,
write artifacts, and return small keys.

Caching: every computing stage is keyed on its inputs (content keys), its own source and the
source of the pure modules it calls (:class:`CodeVersion`), with results persisted, so a rerun
with one change recomputes only what depends on it. Lake publication and tracking are not cached:
they are cheap and idempotent, so the lake and MLflow always reflect the current run.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy

from . import arrays, artifacts, batches
from .data import noise as noise_lib
from .data.classes import MIN_CLASS_SAMPLES, ClassSpec
from .data.dataset import Dataset
from .data.sources import load_source
from .metrics import ranking
from .models import TrainConfig, build_model
from .models.training import accuracy, predict_logits
from .scorers import TrainingContext, get_scorer
from .settings import paths
from .validation import validate_batch, value_summaries


def _module_files(name: str) -> list[Path]:
    mod = importlib.import_module(name)
    return sorted(Path(mod.__file__).parent.rglob("*.py")) if hasattr(mod, "__path__") else [Path(mod.__file__)]


def _winnow_dependencies(module_name: str) -> list[str]:
    """The winnow modules a module uses, transitively (found from what its globals come from)."""
    seen: list[str] = []
    todo = [module_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        mod = sys.modules.get(name) or importlib.import_module(name)
        for value in vars(mod).values():
            owner = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(owner, str) and owner.startswith("winnow.tasks.") and owner not in seen:
                todo.append(owner)
    return sorted(seen)


@dataclass
class CodeVersion(CachePolicy):
    """Cache key part: the source of the named winnow modules (packages: every file in them),
    so editing an algorithm invalidates the stages that run it and nothing else.

    ``scorer_input`` names a task input holding a scorer name: then the key covers that scorer's
    module and the winnow modules it uses, so editing one scorer re-runs only that scorer.
    """

    modules: tuple[str, ...] = ()
    scorer_input: str | None = None

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs):
        names = list(self.modules)
        if self.scorer_input and inputs and self.scorer_input in inputs:
            from .scorers.base import scorer_class

            module = scorer_class(inputs[self.scorer_input]).__module__
            names += _winnow_dependencies(module)
            if "get_scorer" in vars(sys.modules[module]):  # it composes other scorers: cover them all
                names.append("winnow.tasks.scorers")
        # The artifacts a cached result names live under WINNOW_HOME: another home must not be
        # served a result whose files are not there.
        h = hashlib.sha256(str(paths().home).encode())
        for name in sorted(set(names)):
            for f in _module_files(name):
                h.update(f.read_bytes())
        return h.hexdigest()[:16]


def cached(*modules: str, scorer_input: str | None = None, not_keyed: tuple[str, ...] = ()) -> CachePolicy:
    """``not_keyed``: inputs left out of the key (a result they only make faster to compute)."""
    inputs = INPUTS
    for name in not_keyed:
        inputs = inputs - name
    return inputs + TASK_SOURCE + CodeVersion(modules=tuple(f"winnow.tasks.{m}" for m in modules),
                                              scorer_input=scorer_input)


# ---------------------------------------------------------------- recipes


def default_config(dataset: str, model: str, epochs: int | None = None, seed: int = 0,
                   n: int | None = None) -> TrainConfig:
    """The training recipe per data set: small data needs more epochs and smaller batches.

    ``n`` (rows to train on) picks the recipe for the user's data (``images``, ``parquet``):
    up to 20,000 rows that of small sets; above, 10 epochs of 128 (and of 512 past 200,000, where
    a pass over the data is long and the gradient of 512 samples no noisier than that of 128 on a small set).
    """
    if dataset in ("images", "parquet") and n is not None and n > 20_000:
        cfg = TrainConfig(epochs=10, batch_size=512 if n > 200_000 else 128, lr=0.05)
    elif dataset in ("digits", "parquet", "images"):  # small sets: more epochs, smaller batches
        cfg = TrainConfig(epochs=20, batch_size=64, lr=0.05)
    elif dataset == "anomaly":
        # Adam, as in Mercier et al.: SGD (lr 0.02, 15 epochs) sat on the 0.69 plateau at 20%
        # symmetric noise in both seeds tried (test acc 0.53, 0.63) and at 10% for seed 2 (0.51),
        # where Adam 3e-3 for 12 epochs reached 0.958-0.963 (10%) and 0.934 (20%) on 3,000 series.
        # TracIn then weights checkpoints by Adam's base step, an approximation.
        cfg = TrainConfig(epochs=12, batch_size=64, lr=0.003, weight_decay=0.0, optimizer="adam")
    elif dataset.startswith("cifar10n"):
        # SGD lr 0.05 did not learn CIFAR-10 at all on 600 images (test acc 0.18); Adam 1e-3 for
        # 8 epochs reached 0.467 on 3,000 (SGD 0.02: 0.414), one CPU thread, 55 s.
        cfg = TrainConfig(epochs=8, batch_size=64, lr=1e-3, weight_decay=0.0, optimizer="adam")
    else:
        cfg = TrainConfig(epochs=10, batch_size=128, lr=0.05)
    return replace(cfg, seed=seed, epochs=epochs or cfg.epochs)


# ---------------------------------------------------------------- ingest, validate, commit


def source_fingerprint(dataset: str, path: str | None) -> str:
    """Cheap identity of the source's bytes on disk (size + mtime), part of ingest's cache key."""
    if not path and dataset != "fashion-mnist":
        return dataset
    from .data.sources import FASHION_MNIST_DIR

    p = Path(path) if path else FASHION_MNIST_DIR
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    return artifacts.key_of([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()])


@dataclass(frozen=True)
class InputOptions:
    """How to read the user's data (the CLI's ``--classes``, ``--num-classes``, ``--shape``,
    ``--image-size``, ``--label-column``, ``--min-class-samples``); part of ingest's cache key."""

    classes: str | None = None
    num_classes: int | None = None
    shape: str | None = None
    image_size: tuple[int, int] | None = None
    label_column: str = "label"
    min_class_samples: int = MIN_CLASS_SAMPLES

    def class_spec(self) -> ClassSpec:
        return ClassSpec.parse(self.classes, self.num_classes, self.min_class_samples)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


@task(name="ingest", cache_policy=cached("data"), persist_result=True)
def ingest(dataset: str, path: str | None, limit: int | None, fingerprint: str, options: dict | None = None) -> dict:
    """Load a source into a staged batch; returns its batch id (content hash) and what was read."""
    opts = InputOptions(**(options or {}))
    # a Parquet file's big columns go to a file, not to memory; staged, it becomes the batch's array
    with arrays.spill_folder() as spill:
        ds = load_source(dataset, path, limit, classes=opts.class_spec(), shape=opts.shape,
                         image_size=opts.image_size, label_column=opts.label_column, spill_dir=spill)
        batch_id = batches.stage(ds)
        arrays.adopt(ds.values, batch_id)
    get_run_logger().info("ingested %s (%s, %s): %d samples (%d train), shape %s, %d classes (%s), batch %s",
                          ds.name, ds.kind, ds.meta.get("form", dataset), len(ds), int((ds.split == "train").sum()),
                          ds.sample_shape, ds.num_classes, ds.meta.get("classes_source", "fixed"), batch_id)
    return {"batch_id": batch_id, "kind": ds.kind, "shape": list(ds.sample_shape), "n": len(ds),
            "num_classes": ds.num_classes, "class_names": list(ds.class_names),
            "classes_source": ds.meta.get("classes_source", "fixed by the data set"),
            "form": ds.meta.get("form", dataset)}


@task(name="validate", cache_policy=cached("validation", "data"), persist_result=True)
def validate(batch_id: str, class_count: int | None = None, min_class_samples: int = MIN_CLASS_SAMPLES) -> dict:
    """Great Expectations batch suite; raises ValidationFailed (one line per failure)."""
    # the values a row group at a time: the suite checks their per-sample summaries, so a batch
    # of any size is validated without holding it (same expectations, same failures)
    ds = batches.load_staged(batch_id, values=False)
    staged = batches.staging_path(batch_id)
    summaries = (value_summaries(batches.value_blocks(staged), len(ds)) if batches.has_values(staged)
                 else None)  # no values column (pred_probs): nothing to read
    report = validate_batch(ds, class_count, min_class_samples, summaries=summaries)
    get_run_logger().info("batch %s passed %d expectations", batch_id, len(report.results))
    return {"suite": report.suite, "checks": len(report.results), "markdown": report.markdown()}


@task(name="commit", cache_policy=NO_CACHE)
def commit(batch_id: str) -> str:
    batches.commit(batch_id)
    return batch_id


def file_fingerprint(path: str | None) -> str | None:
    """Size + mtime of a file (the backbone), part of a stage's cache key."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: --backbone file not found")
    return artifacts.key_of(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)


@task(name="embed", cache_policy=cached("models.backbone"), persist_result=True)
def embed(batch_id: str, backbone: str, fingerprint: str) -> str:
    """Embed a committed batch with the user's encoder; returns the id of the feature pool the
    head is trained on (an artifact, like the operate flow's pools: the lake keeps the images)."""
    from .models.backbone import embed as run_encoder
    from .models.backbone import load_encoder

    ds = batches.load_committed(batch_id)
    t0 = time.perf_counter()
    feats = run_encoder(load_encoder(backbone), ds.x)
    pool = ds.replace(values=feats, value_range=(None, None), kind="features",
                      meta={**ds.meta, "backbone": str(Path(backbone).resolve()), "embedded_from": batch_id})
    pool_id = batches.stage_pool(pool)
    get_run_logger().info("embedded %d samples with %s: %d-d features in %.1fs (pool %s)", len(ds),
                          Path(backbone).name, feats.shape[1], time.perf_counter() - t0, pool_id)
    return pool_id


# ---------------------------------------------------------------- noise


def _train_split(ds: Dataset) -> Dataset:
    return ds.subset(ds.split == "train")


def clean_model_probs(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Out-of-sample probabilities from a cross-fitted logistic regression on the clean labels
    (instance-dependent noise needs to know how confusable each sample is)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    flat = x.reshape(len(x), -1)
    clf = LogisticRegression(max_iter=300, C=1.0)
    return cross_val_predict(clf, flat, y, cv=3, method="predict_proba")


@task(name="inject-noise", cache_policy=cached("data"), persist_result=True)
def inject_noise(batch_id: str, kind: str, rate: float, seed: int) -> str:
    """Noise the train split; the ground truth goes to an artifact (and later the lake)."""
    key = artifacts.key_of("noise", batch_id, kind, rate, seed)
    ds = arrays.mapped_training_set(batch_id)  # values memory-mapped: read only if the noise needs them
    # Injected noise grades the detectors, so it touches the train split only and the clean test
    # split measures accuracy. With no noise this is an audit of real labels: every row is audited,
    # the test split included (label errors in test sets distort every evaluation).
    train = ds if kind == "none" else arrays.mapped_subset(ds, ds.split == "train", batch_id)
    y, k = train.label, train.num_classes
    # One BLAS thread: the logistic regression behind instance-dependent noise sums in another
    # order with 2 threads than with 1 (a Dask worker has 1), and flipped other labels (seen on
    # Fashion-MNIST). Pinned, the flips are the same in any process.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        if kind == "none":
            noisy = y.copy()
        elif kind == "symmetric":
            noisy = noise_lib.symmetric(y, k, rate, seed)
        elif kind == "class-pair":
            noisy = noise_lib.class_pair(y, k, rate, seed, noise_lib.confusable_partners(train.x, y, k))
        elif kind == "instance-dependent":
            noisy = noise_lib.instance_dependent(y, k, rate, seed, clean_model_probs(train.x, y, k, seed))
        elif kind.startswith("human:"):  # CIFAR-10N's real human labels (rate and seed do not apply)
            from .data.cifar10n import human_labels
            noisy = human_labels(train.sample_id, kind, ds.meta.get("path"))
        else:
            raise ValueError(f"unknown noise kind {kind!r}; choose one of {noise_lib.NOISE_KINDS}")
    artifacts.save_frame("noise", key, pd.DataFrame({
        "sample_id": train.sample_id.astype(str), "original_label": y, "noisy_label": noisy,
        "is_flipped": noisy != y,
    }))
    shown = float((noisy != y).mean()) if kind.startswith("human:") else rate  # human noise: the file's rate
    get_run_logger().info("%s noise at %.0f%%: %d of %d train labels flipped", kind, shown * 100,
                          int((noisy != y).sum()), len(y))
    return key


# ---------------------------------------------------------------- training


@dataclass
class AuditData:
    """A batch's train split with its noisy labels, plus the clean test split."""

    train: Dataset
    noisy: np.ndarray
    flipped: np.ndarray
    test: Dataset


def load_audit_data(batch_id: str, noise_key: str) -> AuditData:
    """The audited rows (those the label table lists: the train split, or every row of a real-data
    audit) with their labels, and the test rows that were not audited."""
    # a committed batch, or a pool of them (operate flow), its values memory-mapped, not loaded:
    # training and scoring read them a batch at a time (arrays.rows_of)
    ds = arrays.mapped_training_set(batch_id)
    nz = artifacts.load_frame("noise", noise_key)
    ids = np.asarray(ds.sample_id.astype(str), dtype=object)
    listed = nz["sample_id"].to_numpy(dtype=object)
    if len(listed) == len(ids) and np.array_equal(listed, ids):
        # every row audited, in the batch's order (an audit of real labels): nothing to look up
        audited, at = np.ones(len(ds), dtype=bool), np.arange(len(ds))
    else:
        # object-dtype indexes hash in C (np.isin on object arrays is quadratic, and pandas'
        # Arrow-backed strings test each id in Python: 52 of the 60 s a load_context took at 10^6)
        index = pd.Index(listed, dtype=object)
        audited = pd.Index(ids, dtype=object).isin(index)
        at = index.get_indexer(ids[audited])
    train = arrays.mapped_subset(ds, audited, batch_id)
    test = arrays.mapped_subset(ds, ~audited & (ds.split == "test"), batch_id)
    return AuditData(train, nz["noisy_label"].to_numpy(np.int64)[at], nz["is_flipped"].to_numpy(bool)[at], test)


def model_factory(kind: str, shape: tuple[int, ...], num_classes: int):
    return lambda: build_model(kind, shape, num_classes)


@task(name="train", cache_policy=cached("models"), persist_result=True)
def train(batch_id: str, noise_key: str, model: str, config: dict, targets_key: str | None = None) -> str:
    """Train on the noisy labels, keeping a checkpoint per epoch; returns the training key.

    ``targets_key``: train on soft targets instead (:func:`save_targets`: one distribution per
    training row, e.g. the on-arrival candidate's ``soft-all`` targets); the label table still
    names the rows and their given labels."""
    key = artifacts.key_of("train", batch_id, noise_key, model, config, *([targets_key] if targets_key else []))
    data = load_audit_data(batch_id, noise_key)
    cfg = TrainConfig(**config)
    log = get_run_logger()
    t0 = time.perf_counter()
    if model == GIVEN_PROBS:  # the user's own out-of-sample probabilities: nothing to train
        artifacts.save_json("train", key, {
            "batch_id": batch_id, "noise_key": noise_key, "model": model, "config": config,
            "shape": [], "num_classes": data.train.num_classes, "test_accuracy": float("nan"), "train_loss": [],
            "seconds": 0.0})
        artifacts.save_torch("oos", key, torch.as_tensor(data.train.pred_probs))
        log.info("given probabilities for %d samples: no training", len(data.train))
        return key
    ctx = _context(data, model, cfg, [])
    targets = None if targets_key is None else load_targets(targets_key, data.train.sample_id)
    result = ctx.train(y=targets,
                       on_epoch=lambda e, l: log.info("train %s epoch %d/%d loss %.4f", model, e, cfg.epochs, l))
    meta = {
        "batch_id": batch_id, "noise_key": noise_key, "model": model, "config": config, "targets_key": targets_key,
        "shape": list(data.train.sample_shape), "num_classes": data.train.num_classes,
        "test_accuracy": accuracy(result.model, arrays.rows_of(data.test.values), data.test.label),
        "train_loss": result.train_loss, "seconds": time.perf_counter() - t0,
    }
    artifacts.save_torch("checkpoints", key, [c.__dict__ for c in result.checkpoints])
    artifacts.save_json("train", key, meta)
    log.info("noisy-label model: test accuracy %.4f", meta["test_accuracy"])
    return key


def save_targets(sample_ids: np.ndarray, targets: np.ndarray) -> str:
    """Store soft training targets for :func:`train` under a key of their content.

    Parameters
    ----------
    sample_ids : shape (n,) — the training rows the targets belong to
    targets : shape (n, C), rows summing to 1
    """
    ids = np.asarray(sample_ids).astype(str)
    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 2 or len(targets) != len(ids):
        raise ValueError(f"targets must have shape ({len(ids)}, C), got {targets.shape}")
    if not np.all(np.isfinite(targets)) or (targets < 0).any() or not np.allclose(targets.sum(1), 1, atol=1e-3):
        raise ValueError("targets must be distributions (non-negative, rows summing to 1)")
    digest = hashlib.sha256("\x00".join(ids).encode() + targets.tobytes()).hexdigest()
    key = artifacts.key_of("targets", digest)
    artifacts.save_torch("targets", key, {"sample_id": ids.tolist(), "targets": torch.as_tensor(targets)})
    return key


def load_targets(targets_key: str, sample_ids: np.ndarray) -> torch.Tensor:
    """The stored targets of ``sample_ids``, in that order: shape (n, C), float32."""
    stored = artifacts.load_torch("targets", targets_key)
    at = pd.Index(stored["sample_id"]).get_indexer(np.asarray(sample_ids).astype(str))
    if (at < 0).any():
        missing = np.asarray(sample_ids)[at < 0][0]
        raise ValueError(f"targets {targets_key}: no target for sample {missing!r}")
    return stored["targets"][torch.as_tensor(at)]


GIVEN_PROBS = "given-probs"  # the "model" of a run on the user's own out-of-sample probabilities


def _context(data: AuditData, model: str, cfg: TrainConfig, checkpoints, seed: int | None = None) -> TrainingContext:
    if model == GIVEN_PROBS:
        return TrainingContext.from_probabilities(data.train.pred_probs, data.noisy, data.train.sample_id, cfg)
    return TrainingContext(
        arrays.rows_of(data.train.values), torch.as_tensor(data.noisy), data.train.num_classes,
        model_factory(model, data.train.sample_shape, data.train.num_classes), checkpoints, cfg,
        data.train.sample_id, seed=cfg.seed if seed is None else seed,
    )


def load_context(train_key: str) -> tuple[TrainingContext, AuditData, dict]:
    """Rebuild the scorer context of a training run from its artifacts."""
    from .models.training import Checkpoint

    meta = artifacts.load_json("train", train_key)
    data = load_audit_data(meta["batch_id"], meta["noise_key"])
    checkpoints = ([] if meta["model"] == GIVEN_PROBS
                   else [Checkpoint(**c) for c in artifacts.load_torch("checkpoints", train_key)])
    return _context(data, meta["model"], TrainConfig(**meta["config"]), checkpoints), data, meta


# ---------------------------------------------------------------- scoring


@task(name="out-of-sample", cache_policy=cached("models", "scorers.base", "scorers.neighbors"), persist_result=True)
def out_of_sample(train_key: str, folds: int = 4) -> str:
    """K-fold out-of-sample probabilities (shared by confident learning and the k estimate) and,
    from the same fold models, each sample's k-NN label votes (the `knn` scorers)."""
    from .scorers.neighbors import out_of_sample_views

    ctx, _, _ = load_context(train_key)
    ctx.kfold = folds
    log = get_run_logger()
    probs, votes = out_of_sample_views(ctx, on_fold=lambda done, k: log.info("out-of-sample fold %d/%d trained", done, k))
    artifacts.save_torch("oos", train_key, torch.as_tensor(probs))
    artifacts.save_torch("oos-knn", train_key, torch.as_tensor(votes))
    return train_key


@task(name="out-of-sample-fold", cache_policy=cached("models", "scorers.base"), persist_result=True,
      task_run_name="out-of-sample-fold-{fold}")
def out_of_sample_fold(train_key: str, fold: int, folds: int = 4) -> str | None:
    """Fold ``fold`` of :func:`out_of_sample`, on its own (the folds are independent, so they can
    run side by side); returns its artifact key, or None when the split has fewer folds (tiny classes)."""
    ctx, _, _ = load_context(train_key)
    ctx.kfold = folds
    if fold >= len(ctx.folds()):
        return None
    held, probs = ctx.fold_probs(fold)
    key = artifacts.key_of("oos-fold", train_key, fold, folds)
    artifacts.save_torch("oos-folds", key, {"held": torch.as_tensor(held), "probs": torch.as_tensor(probs)})
    get_run_logger().info("out-of-sample fold %d/%d: %d held-out rows", fold + 1, folds, len(held))
    return key


@task(name="out-of-sample-merge", cache_policy=cached("models", "scorers.base"), persist_result=True)
def merge_out_of_sample(train_key: str, fold_keys: list[str | None]) -> str:
    """The folds' held-out probabilities as one (n, C) table: the same artifact, values and key
    :func:`out_of_sample` writes."""
    meta = artifacts.load_json("train", train_key)
    parts = [artifacts.load_torch("oos-folds", k) for k in fold_keys if k is not None]
    n = sum(len(p["held"]) for p in parts)
    probs = torch.zeros((n, meta["num_classes"]), dtype=torch.float64)
    for p in parts:
        probs[p["held"]] = p["probs"]
    artifacts.save_torch("oos", train_key, probs)
    return train_key


def _with_oos(ctx: TrainingContext, oos_key: str | None) -> TrainingContext:
    if oos_key:
        from .scorers.neighbors import OOS_VOTES_CACHE

        ctx._cache["oos_probs"] = artifacts.load_torch("oos", oos_key).numpy()
        if artifacts.path("oos-knn", oos_key, ".pt").exists():
            ctx._cache[OOS_VOTES_CACHE] = artifacts.load_torch("oos-knn", oos_key).numpy()
    return ctx


#: rows per shard of the stored checkpoint logits: a multiple of ``predict_logits``' batch (128),
#: so a shard computes bit for bit the logits one pass over the whole set does
LOGIT_SHARD_ROWS = 1 << 18


def logit_shards(n: int, rows: int | None = None) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges covering ``n`` rows, ``rows`` each (default
    :data:`LOGIT_SHARD_ROWS`; one empty range when n = 0)."""
    rows = rows or LOGIT_SHARD_ROWS
    if n < 0 or rows < 1 or rows % 128:
        raise ValueError(f"logit_shards: n must be >= 0 and rows a positive multiple of 128, got {n}, {rows}")
    return [(a, min(n, a + rows)) for a in range(0, n, rows)] or [(0, 0)]


@task(name="checkpoint-logits", cache_policy=cached("models", "scorers.base"), persist_result=True,
      task_run_name="checkpoint-logits-{start}")
def checkpoint_logits_shard(train_key: str, start: int, stop: int) -> str:
    """The training rows ``[start, stop)``'s logits at every checkpoint, stored as an array
    artifact of shape (m, T, C) float32 (rows first, so shards concatenate); returns its key.
    Rows past the end of the training set are dropped (a shard plan made from the batch size)."""
    ctx, _, _ = load_context(train_key)
    if not 0 <= start <= stop:
        raise ValueError(f"checkpoint-logits: rows [{start}, {stop}) is not a range")
    start, stop = min(start, ctx.n), min(stop, ctx.n)
    rows = ctx.rows.subset(np.arange(start, stop))
    logits = np.stack([predict_logits(ctx.model_at(t), rows, device=ctx.device).numpy()
                       for t in range(len(ctx.checkpoints))], axis=1) if stop > start else \
        np.zeros((0, len(ctx.checkpoints), ctx.num_classes), dtype=np.float32)
    key = artifacts.key_of("logits-shard", train_key, start, stop)
    arrays.write_npy(key, logits.shape, np.float32, [logits])
    return key


@task(name="checkpoint-logits-merge", cache_policy=cached("models", "scorers.base"), persist_result=True)
def merge_checkpoint_logits(train_key: str, shard_keys: list[str]) -> str:
    """The shards' logits as one array artifact, shape (n, T, C) float32, rows in order; returns its key."""
    parts = [arrays.open_mapped(k) for k in shard_keys]
    if not parts or any(p.shape[1:] != parts[0].shape[1:] for p in parts):
        raise ValueError(f"checkpoint-logits-merge: shards of shapes {[p.shape for p in parts]} do not stack")
    key = artifacts.key_of("logits", train_key)
    arrays.write_npy(key, (sum(len(p) for p in parts), *parts[0].shape[1:]), np.float32, parts)
    return key


def stored_checkpoint_logits(logits_key: str) -> torch.Tensor:
    """The merged logits artifact as :meth:`TrainingContext.checkpoint_logits` gives them: (T, n, C)."""
    stored = np.load(arrays.array_path(logits_key))  # (n, T, C): per-sample scores' size, not the set's
    return torch.from_numpy(np.ascontiguousarray(stored.transpose(1, 0, 2)))


@task(name="score", cache_policy=cached("scorers.base", "models", scorer_input="scorer", not_keyed=("logits_key",)),
      persist_result=True, task_run_name="score-{scorer}")
def score(train_key: str, scorer: str, oos_key: str | None = None, logits_key: str | None = None) -> str:
    """Run one registered scorer; returns the key of its score table. ``logits_key``: the stored
    checkpoint logits (:func:`merge_checkpoint_logits`), read instead of computed; the scores are
    the same (bit for bit), so the key is not part of the cache key."""
    ctx, data, _ = load_context(train_key)
    _with_oos(ctx, oos_key)
    if logits_key:
        ctx._cache["checkpoint_logits"] = stored_checkpoint_logits(logits_key)
    t0 = time.perf_counter()
    values = get_scorer(scorer)(ctx)
    seconds = time.perf_counter() - t0
    key = artifacts.key_of("score", train_key, scorer)
    artifacts.save_frame("scores", key, pd.DataFrame({
        "sample_id": data.train.sample_id.astype(str), "score": values}))
    artifacts.save_json("scores", key, {"scorer": scorer, "seconds": seconds})
    get_run_logger().info("scorer %s: %d samples in %.1fs", scorer, len(values), seconds)
    return key


@task(name="estimate-k", cache_policy=cached("scorers.confident", "noise_rate"), persist_result=True)
def estimate_k(oos_key: str, train_key: str, method: str | None = None) -> int:
    """How many training labels are wrong: ``method`` of :data:`winnow.tasks.noise_rate.ESTIMATORS`,
    by default the recommended one (``noise_rate.RECOMMENDED``). The on-arrival gate's canary and
    noise-rate thresholds were set on confident learning's counts (``method="confident"``; see
    docs/remedies.md for what the default's smaller counts do to them)."""
    from . import noise_rate

    if method is not None and method not in noise_rate.ESTIMATORS:
        raise ValueError(f"unknown noise-count estimator {method!r}; choose one of {', '.join(noise_rate.ESTIMATORS)}")
    ctx, _, _ = load_context(train_key)
    probs = artifacts.load_torch("oos", oos_key).numpy()
    return noise_rate.estimate(ctx.y.numpy(), probs, method or noise_rate.RECOMMENDED)


# ---------------------------------------------------------------- prune, retrain, oracle


@task(name="second-opinion", cache_policy=cached("scorers.label_free"), persist_result=True)
def second_opinion(train_key: str) -> str:
    """A second opinion on every training row's class that learned nothing from the audited model
    and never saw the row's own label: the label-free probe, cross-fitted
    (``scorers.label_free.cross_fitted_probe``), as probabilities. The suggested labels of a real
    audit average it with the out-of-sample probabilities; ``relabel-agreed`` relabels where the
    two agree, ``relabel-soft`` and ``soft-all`` train the flagged rows on their average."""
    from .scorers import label_free

    ctx, data, _ = load_context(train_key)
    probs = label_free.second_opinion(ctx.rows, np.asarray(data.noisy), ctx.num_classes, seed=ctx.train_config.seed)
    artifacts.save_torch("second-opinion", train_key, torch.as_tensor(probs))
    return train_key


@task(name="retrain", cache_policy=cached("models", "remedies"), persist_result=True,
      task_run_name="retrain-{label}")
def retrain(train_key: str, label: str, score_key: str | None, k: int, clean: bool = False,
            remedy: str = "prune", oos_key: str | None = None, second_key: str | None = None) -> dict:
    """Act on the top-``k`` of a score table (or nothing) and retrain the same recipe.

    ``remedy`` (:data:`winnow.tasks.remedies.REMEDIES`; ``winnow run``'s default is
    :data:`~winnow.tasks.remedies.DEFAULT_REMEDY`): ``select`` picks among no change, ``prune``,
    ``relabel`` and ``gce`` by cross-validated accuracy on the given labels (needs ``oos_key``: the out-of-sample pass is its no-change candidate); ``prune``
    drops the flagged rows; ``relabel`` gives them the out-of-sample consensus (needs ``oos_key``);
    ``relabel-agreed`` gives them the class the out-of-sample folds and the label-free probe agree
    on and drops the rest (needs ``oos_key`` and ``second_key``, :func:`second_opinion`);
    ``relabel-soft`` trains them on the average of those two opinions as soft targets (same keys),
    ``soft-all`` too, and every other row on half its label, half that average;
    ``weight`` draws them less often; ``semi`` lets a model trained on the unflagged rows
    pseudo-label them; ``gce`` retrains on every row with the generalized cross-entropy.
    ``clean=True`` trains on the original labels (the oracle); ``score_key=None`` with ``k=0`` is
    the noisy model retrained as-is.
    """
    from . import remedies

    if remedy not in remedies.REMEDIES:
        raise ValueError(f"unknown remedy {remedy!r}; choose one of {', '.join(remedies.REMEDIES)}")
    if remedy in remedies.NEEDS_OOS and oos_key is None and score_key is not None and k > 0:
        raise ValueError(f"remedy {remedy!r} needs the out-of-sample probabilities (oos_key)")
    if remedy in remedies.NEEDS_SECOND_OPINION and second_key is None and score_key is not None and k > 0:
        raise ValueError(f"remedy {remedy!r} needs the label-free second opinion (second_key)")
    ctx, data, meta = load_context(train_key)
    flags = np.zeros(ctx.n, dtype=bool)
    if score_key is not None and k > 0:
        scores = artifacts.load_frame("scores", score_key)["score"].to_numpy()
        flags[ranking(scores)[:k]] = True
    y = data.train.label if clean else data.noisy
    if not flags.any() and remedy != "gce":
        remedy = "prune"  # nothing flagged: every flag-based remedy is the plain retrain
    probs = artifacts.load_torch("oos", oos_key).numpy() if oos_key is not None and remedy in remedies.NEEDS_OOS else None
    second = (artifacts.load_torch("second-opinion", second_key).numpy()
              if second_key is not None and remedy in remedies.NEEDS_SECOND_OPINION else None)

    def train_fn(rows, labels, loss_fn):
        return ctx.train(ctx.rows.subset(rows), torch.as_tensor(labels), keep_checkpoints=False, loss_fn=loss_fn).model

    def predict_fn(model, rows):
        return torch.softmax(predict_logits(model, ctx.rows.subset(rows)), 1).double().numpy()

    outcome = remedies.train_with_remedy(remedy, y, flags, probs, ctx.train_config.seed, train_fn, predict_fn,
                                         folds=ctx.folds() if remedy == "select" else None, second=second)
    plan = outcome.plan
    keep = np.zeros(ctx.n, dtype=bool)
    keep[plan.rows] = True
    acc = accuracy(outcome.model, arrays.rows_of(data.test.values), data.test.label)
    removed_flipped = int(data.flipped[~keep].sum())
    get_run_logger().info("%s: %s, removed %d (%d truly flipped), test accuracy %.4f", label, outcome.applied,
                          int((~keep).sum()), removed_flipped, acc)
    state = {k_: v.detach().cpu() for k_, v in outcome.model.state_dict().items()}
    # prune keeps its old key: earlier runs' models stay addressable
    model_key = artifacts.key_of("retrain", train_key, label, score_key, k, clean, *([remedy] if remedy != "prune" else []))
    artifacts.save_torch("models", model_key, state)
    return {"label": label, "test_accuracy": acc, "removed": int((~keep).sum()), "relabelled": plan.changed,
            "removed_flipped": removed_flipped, "remedy": remedy, "applied": outcome.applied,
            "holdout_accuracy": outcome.holdout_accuracy, "model_key": model_key}


def test_logits(train_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Final noisy model's logits on the test split (for reports)."""
    ctx, data, _ = load_context(train_key)
    return predict_logits(ctx.model_at(-1), arrays.rows_of(data.test.values)).numpy(), data.test.label
