"""The explain stage's Prefect tasks: why does the model disagree with a flagged sample's label?

Three seed papers, each with its own measured check:

* **IG with an explicit baseline** (Cui & Fan): attributions of the given and of the suggested
  label's logit, with the completeness gap ``|sum(attr) - (f(x) - f(b))|`` per sample and the
  number of quadrature steps it took to get it under tolerance (input IG and layer IG at
  ``model.body``).
* **Latent counterfactuals** (Alipour et al. 2022): a VAE trained on the run's training images,
  the smallest latent shift that makes the model call a flagged sample its *given* label ("what
  would it need to look like to deserve its label?") and its *suggested* one, with validity and
  proximity; plus contrastive sufficiency / necessity of the latent class directions.
* **EDDA** (arXiv 2105.14162): model-explainer alignment (confidence drop when the IG-salient
  pixels are occluded, minus the drop for random pixels) of the run's model vs. the same recipe
  retrained with explanation-driven augmentation, and the test accuracy of both.

Like :mod:`winnow.tasks.stages`: thin cached tasks that load artifacts, call the pure
:mod:`winnow.tasks.explainers` functions, save artifacts and return small keys or figures. The
cache key includes the source of the explainer modules they call (and of this module, whose
helpers they share), so editing an explainer recomputes exactly the stages that use it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from functools import wraps

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger, task
from torch.nn import functional as F

from . import artifacts, batches, lake, stages
from .explainers.baselines import BASELINE_KINDS, make_baseline
from .explainers.counterfactual import class_directions, contrastive_scores, latent_counterfactual
from .explainers.edda import EDDAConfig, alignment_drops, ig_saliency, resolve_fill, train_with_edda
from .explainers.ig import steps_for_tolerance
from .explainers.vae import VAE, train_vae
from .metrics import ranking
from .models.training import accuracy

CPU = torch.device("cpu")


def one_thread(fn):
    """Run ``fn`` with one torch thread.

    The explain models are small (an MLP/CNN, a VAE, batches of <= a few hundred rows), so
    intra-op parallelism buys little and, on a shared CPU, costs a lot: training the digits VAE
    for 3 epochs took 13-21 s with 2 threads and 0.8-3 s with 1 on the loaded 2-core dev box.
    """
    @wraps(fn)
    def wrapper(*args, **kwargs):
        with _threads(1):
            return fn(*args, **kwargs)

    return wrapper


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- helpers (pure)


def flagged_sample_ids(run_id: str, scorer: str, top: int, score_key: str | None = None,
                       skip: set[str] | None = None) -> list[str]:
    """The ``top`` training samples a scorer finds most suspicious, most suspicious first.

    Parameters
    ----------
    run_id : str
        Lake run id whose ``scores`` rows rank the samples.
    scorer : str
    top : int
    score_key : str, optional
        Read the score table from this artifact instead of the lake (scores computed on demand).
    skip : set of str, optional
        Sample ids never returned (an arrival's planted canaries).

    Returns
    -------
    list of str
    """
    if score_key is not None:
        scores = artifacts.load_frame("scores", score_key)
    else:
        con = lake.connect()
        try:
            scores = con.execute("SELECT sample_id, score FROM scores WHERE run_id = ? AND scorer = ?",
                                 [run_id, scorer]).df()
        finally:
            con.close()
    if scores.empty:
        raise ValueError(f"run {run_id!r} has no '{scorer}' scores in the lake")
    if skip:
        scores = scores[~scores["sample_id"].astype(str).isin(skip)]
    # the one ranking (ties in row order), as the flags and the review queue are ranked
    return scores["sample_id"].astype(str).to_numpy()[ranking(scores["score"].to_numpy())][:int(top)].tolist()


def planted_canaries(train_key: str) -> set[str]:
    """Sample ids whose label the on-arrival flow flipped on purpose in the pool it trained on."""
    meta = artifacts.load_json("train", train_key)
    labels = artifacts.load_frame("noise", meta["noise_key"])
    return set(labels.loc[labels["is_flipped"].astype(bool), "sample_id"].astype(str))


def _index_of(sample_ids: np.ndarray, wanted: list[str]) -> np.ndarray:
    pos = pd.Series(np.arange(len(sample_ids)), index=pd.Index(sample_ids.astype(str)))
    missing = [s for s in wanted if s not in pos.index]
    if missing:
        raise ValueError(f"sample ids not in the run's training split: {missing[:5]}")
    return pos.loc[wanted].to_numpy()


def suggested_labels(model: torch.nn.Module, x: torch.Tensor, given: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's argmax class, or its runner-up where the argmax is the given label.

    Returns
    -------
    suggested : torch.Tensor, shape (n,), int64
    probs : torch.Tensor, shape (n, num_classes)
    """
    with torch.no_grad():
        probs = F.softmax(model(x), 1)
    top2 = probs.topk(2, dim=1).indices
    suggested = torch.where(top2[:, 0] == given, top2[:, 1], top2[:, 0])
    return suggested, probs


def _flagged(train_key: str, sample_ids: list[str]):
    """The final model (CPU, eval), the training context and the flagged rows with their labels."""
    ctx, data, meta = stages.load_context(train_key)
    ctx.device = CPU  # explanations are small; keep model, VAE and data on one device
    model = ctx.model_at(-1)
    idx = _index_of(data.train.sample_id, sample_ids)
    x = ctx.x[idx]
    given = ctx.y[idx]
    suggested, probs = suggested_labels(model, x, given)
    return model, ctx, data, idx, x, given, suggested, probs


def _test_subset(data, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` held-out samples, seeded.

    An audit's test split was never noised and never audited. A real-data audit audits every
    row, so there the rows the user marked ``test`` stand in, else all rows, with their given
    labels (the model was trained on them too: the figures that use them then say how the model
    behaves on its data, not how it generalises).
    """
    held = data.test
    if len(held.label) == 0:
        test_rows = data.train.split == "test"
        held = data.train.subset(test_rows) if test_rows.any() else data.train
    m = len(held.label)
    if m == 0:
        raise ValueError("the run has no rows to check the explanations on")
    pick = np.sort(np.random.default_rng(seed).permutation(m)[:min(n, m)])
    return torch.as_tensor(held.subset(pick).x), torch.as_tensor(held.label[pick], dtype=torch.long)


def load_vae(vae_key: str) -> VAE:
    meta = artifacts.load_json("vae", vae_key)
    vae = VAE(tuple(meta["shape"]), meta["latent_dim"], meta["hidden"])
    vae.load_state_dict(artifacts.load_torch("vae", vae_key))
    return vae.eval()


def _check_unit_range(x: torch.Tensor, what: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{what} needs inputs in [0, 1] (images); this run's data span [{lo:.3g}, {hi:.3g}]")


# ---------------------------------------------------------------- (a) IG with an explicit baseline


@task(name="explain-ig", cache_policy=stages.cached("explainers.ig", "explainers.baselines", "models", "explain_stages"),
      persist_result=True)
@one_thread
def explain_ig(train_key: str, sample_ids: list[str], baseline: str = "default", rtol: float = 1e-2,
               max_steps: int = 1024, method: str = "gausslegendre") -> str:
    """IG of the given and of the suggested label for flagged samples, to a completeness tolerance.

    For each target the baseline is ``make_baseline(baseline, ...)`` with the *other* label of the
    pair as contrast class (used by ``default``/``class_mean``); class means come from the run's
    given labels, which is what the pipeline knows. Steps double (4, 8, ...) until each sample's
    gap is at most ``rtol * |f(x) - f(b)| + 1e-4``; layer IG at ``model.body`` is checked the
    same way.

    Returns
    -------
    str
        Key of the ``explain-ig`` artifact (a dict of tensors/arrays, one row per flagged sample).
    """
    if baseline not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINE_KINDS}")
    model, ctx, data, idx, x, given, suggested, probs = _flagged(train_key, sample_ids)
    t0 = time.perf_counter()
    out = {"sample_ids": list(sample_ids), "index": idx, "x": x.numpy(), "given": given.numpy(),
           "suggested": suggested.numpy(), "original": data.train.label[idx], "is_flipped": data.flipped[idx],
           "class_names": list(data.train.class_names),
           "p_given": probs.gather(1, given[:, None]).squeeze(1).numpy(),
           "p_suggested": probs.gather(1, suggested[:, None]).squeeze(1).numpy(),
           "baseline": baseline, "rtol": rtol, "max_steps": max_steps, "method": method}
    for name, target, contrast in (("given", given, suggested), ("suggested", suggested, given)):
        b = make_baseline(baseline, x, train_x=ctx.x, train_y=ctx.y, num_classes=ctx.num_classes, contrast=contrast)
        search = steps_for_tolerance(model, x, b, target, rtol=rtol, max_steps=max_steps, method=method)
        layer = steps_for_tolerance(model, x, b, target, rtol=rtol, max_steps=max_steps, method=method, layer="body")
        out.update({f"attr_{name}": search.attributions.numpy(), f"gap_{name}": search.gap,
                    f"delta_{name}": search.delta, f"steps_{name}": search.steps,
                    f"layer_gap_{name}": layer.gap, f"layer_delta_{name}": layer.delta,
                    f"layer_steps_{name}": layer.steps})
    out["seconds"] = time.perf_counter() - t0
    key = artifacts.key_of("explain-ig", train_key, sample_ids, baseline, rtol, max_steps, method)
    artifacts.save_torch("explain-ig", key, out)
    get_run_logger().info("IG (%s baseline): %d samples, max gap %.2e, %d/%d converged within %d steps",
                          baseline, len(idx), float(np.nanmax(np.r_[out["gap_given"], out["gap_suggested"]])),
                          int(((out["steps_given"] > 0) & (out["steps_suggested"] > 0)).sum()), len(idx), max_steps)
    return key


# ---------------------------------------------------------------- (b) VAE, counterfactuals, contrastive scores


@task(name="explain-vae", cache_policy=stages.cached("explainers.vae", "explainers.baselines", "explain_stages"),
      persist_result=True)
@one_thread
def train_explainer_vae(batch_id: str, latent_dim: int = 16, hidden: int = 256, epochs: int = 30, seed: int = 0,
                        batch_size: int = 64) -> str:
    """Train the counterfactual generator on a batch's training images.

    Keyed on the batch, not the run: every run (noise, model, scorer) on the same data shares one
    VAE, and labels play no part in it.

    Returns
    -------
    str
        Key of the ``vae`` artifact (state dict + JSON meta).
    """
    ds = batches.load_training_set(batch_id)
    x = torch.as_tensor(ds.x[ds.split == "train"])
    _check_unit_range(x, "the counterfactual VAE")
    t0 = time.perf_counter()
    # Batches of 64: what matters on small sets is the number of Adam steps (digits with batches
    # of 128 and 5 epochs is 60 steps, and the decoder still ignores z).
    result = train_vae(x, latent_dim=latent_dim, hidden=hidden, epochs=epochs, batch_size=batch_size, seed=seed,
                       device=CPU)
    key = artifacts.key_of("vae", batch_id, latent_dim, hidden, epochs, seed, batch_size)
    artifacts.save_torch("vae", key, {k: v.detach().cpu() for k, v in result.vae.state_dict().items()})
    artifacts.save_json("vae", key, {"batch_id": batch_id, "shape": list(x.shape[1:]), "latent_dim": latent_dim,
                                     "hidden": hidden, "epochs": epochs, "seed": seed, "batch_size": batch_size,
                                     "loss": result.loss,
                                     "n": len(x), "seconds": time.perf_counter() - t0})
    get_run_logger().info("VAE on %d images: loss %.2f -> %.2f in %.1fs", len(x), result.loss[0], result.loss[-1],
                          time.perf_counter() - t0)
    return key


@task(name="explain-counterfactuals",
      cache_policy=stages.cached("explainers.counterfactual", "explainers.vae", "models", "explain_stages"),
      persist_result=True)
@one_thread
def explain_counterfactuals(train_key: str, sample_ids: list[str], vae_key: str, beta: float = 0.05,
                            max_iter: int = 300) -> str:
    """Latent counterfactuals of flagged samples toward their given and their suggested label.

    Returns
    -------
    str
        Key of the ``explain-cf`` artifact: per target (``given``/``suggested``) the images,
        success, latent / pixel / input distances, target probability and iterations.
    """
    model, _, _, idx, x, given, suggested, _ = _flagged(train_key, sample_ids)
    vae = load_vae(vae_key)
    t0 = time.perf_counter()
    out = {"sample_ids": list(sample_ids), "given": given.numpy(), "suggested": suggested.numpy()}
    for name, target in (("given", given), ("suggested", suggested)):
        cf = latent_counterfactual(model, vae, x, target, beta=beta, max_iter=max_iter)
        out.update({f"{name}_x_cf": cf.x_cf.numpy(), f"{name}_success": cf.success,
                    f"{name}_latent_distance": cf.latent_distance, f"{name}_pixel_distance": cf.pixel_distance,
                    f"{name}_input_distance": cf.input_distance, f"{name}_target_prob": cf.target_prob,
                    f"{name}_iterations": cf.iterations, f"{name}_summary": cf.summary()})
        out["reconstruction"] = cf.reconstruction.numpy()
    out["seconds"] = time.perf_counter() - t0
    key = artifacts.key_of("explain-cf", train_key, sample_ids, vae_key, beta, max_iter)
    artifacts.save_torch("explain-cf", key, out)
    get_run_logger().info("counterfactuals: validity toward given %.2f, toward suggested %.2f",
                          out["given_summary"]["validity"], out["suggested_summary"]["validity"])
    return key


@task(name="explain-contrastive",
      cache_policy=stages.cached("explainers.counterfactual", "explainers.vae", "models", "explain_stages"),
      persist_result=True)
@one_thread
def contrastive_check(train_key: str, vae_key: str, n: int = 1000, strength: float = 1.0, seed: int = 0) -> dict:
    """Contrastive sufficiency / necessity of the latent class directions for the run's model.

    Directions come from the training images with their given labels (what the pipeline knows,
    and many samples average the noise out); the scores are measured on up to ``n`` test samples,
    whose labels are clean.

    Returns
    -------
    dict
        ``summary`` (means/minima), per-class ``sufficiency``/``necessity`` lists and ``n``.
    """
    ctx, data, _ = stages.load_context(train_key)
    ctx.device = CPU
    model, vae = ctx.model_at(-1), load_vae(vae_key)
    t0 = time.perf_counter()
    directions = class_directions(vae, ctx.x, ctx.y, ctx.num_classes)
    x, y = _test_subset(data, n, seed)
    scores = contrastive_scores(model, vae, x, y, ctx.num_classes, strength=strength, directions=directions)
    get_run_logger().info("contrastive: sufficiency %.3f, necessity %.3f over %d test samples",
                          float(np.nanmean(scores.sufficiency)), float(np.nanmean(scores.necessity)), len(x))
    return {"summary": scores.summary(), "sufficiency": scores.sufficiency.tolist(),
            "necessity": scores.necessity.tolist(), "n": len(x), "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- (c) EDDA alignment check


@task(name="explain-edda",
      cache_policy=stages.cached("explainers.edda", "explainers.ig", "explainers.baselines", "models", "explain_stages"),
      persist_result=True)
@one_thread
def edda_check(train_key: str, n_eval: int = 1000, k: float = 0.1, ig_steps: int = 32, seed: int = 0) -> dict:
    """Retrain the run's recipe with EDDA and compare model-explainer alignment and test accuracy.

    Both models see the same noisy labels, recipe and seed; the only difference is EDDA's
    augmentation. Alignment is measured on up to ``n_eval`` test samples for their (clean) label:
    IG saliency with the occlusion fill (the training mean image) as baseline, then the mean
    confidence drop when the top-``k`` salient pixels are occluded minus the drop for ``k``
    random pixels.

    Returns
    -------
    dict
        ``run`` and ``edda``: each the alignment summary plus ``test_accuracy``; and ``seconds``.
    """
    ctx, data, _ = stages.load_context(train_key)
    ctx.device = CPU
    log = get_run_logger()
    t0 = time.perf_counter()
    config = EDDAConfig()
    trained = train_with_edda(ctx.model_factory, ctx.x, ctx.y, ctx.train_config, config, num_classes=ctx.num_classes,
                              device=CPU, keep_checkpoints=False,
                              on_epoch=lambda e, l: log.info("EDDA retrain epoch %d loss %.4f", e, l))
    fill = resolve_fill(config.fill, ctx.x)
    x, y = _test_subset(data, n_eval, seed)
    out = {"seconds_train": time.perf_counter() - t0, "n_eval": len(x), "k": k}
    for name, model in (("run", ctx.model_at(-1)), ("edda", trained.model.to(CPU).eval())):
        saliency = ig_saliency(model, x, y, fill, steps=ig_steps)
        out[name] = {**alignment_drops(model, x, y, saliency, fill, k=k, seed=seed).summary(),
                     "test_accuracy": accuracy(model, data.test.x, data.test.label)}
    out["seconds"] = time.perf_counter() - t0
    log.info("EDDA: alignment %.3f (run) vs %.3f (EDDA); test accuracy %.4f vs %.4f",
             out["run"]["alignment"], out["edda"]["alignment"], out["run"]["test_accuracy"],
             out["edda"]["test_accuracy"])
    return out
