"""The array-level API: ``winnow.find_label_issues(labels, pred_probs=... | features=... | images=...)``.

Arrays in, a ranked table out; no Prefect, no lake, no MLflow (``winnow.audit`` is the tracked,
cached flow). The same scorers, recipe and noise-count estimate as ``winnow run``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def _check_labels(labels, n: int | None = None) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if n is not None and len(y) != n:
        raise ValueError(f"labels has {len(y)} rows, the data {n}")
    if len(y) and y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    return y.astype(np.int64)


def find_label_issues(labels, pred_probs=None, features=None, images=None, *, num_classes: int | None = None,
                      scorers: str | list[str] | None = None, folds: int = 4, epochs: int | None = None,
                      seed: int = 0) -> pd.DataFrame:
    """Rank samples by how likely their given label is wrong.

    Give exactly one of ``pred_probs``, ``features`` or ``images``.

    Parameters
    ----------
    labels : array-like, shape (n,), int
        Given labels in ``[0, num_classes)``.
    pred_probs : array-like, shape (n, K), optional
        Your own out-of-sample probabilities: nothing is trained; scorers ``loss``, ``margin``,
        ``confident``.
    features : array-like, shape (n, D), optional
        Feature vectors (embeddings, tabular): an MLP is trained (and K fold models).
    images : array-like, shape (n, C, H, W), optional
        uint8 0..255 or floats in [0, 1]: the CNN is trained (and K fold models).
    num_classes : int, optional
        Default ``max(labels) + 1`` (or K of ``pred_probs``).
    scorers : str or list of str, optional
        The first ranks the table (default as ``winnow run``: the recommended detector first).
    folds : int
        Folds of the out-of-sample probabilities (default 4).
    epochs : int, optional
        Override the recipe's epochs.

    Returns
    -------
    pandas.DataFrame, n rows sorted most suspicious first
        ``index`` (row in the input), ``label``, ``suggested_label`` (the argmax of the
        out-of-sample probabilities, averaged with the label-free probe's on features and images),
        ``score`` (the first scorer; higher = more suspicious), ``is_label_issue`` (the top k, k =
        the estimated number of wrong labels, the estimator ``winnow run`` uses:
        :data:`winnow.tasks.noise_rate.RECOMMENDED`), ``suggestion_probs`` (an array of shape (K,)
        per row, whose argmax is ``suggested_label``), ``soft_label`` (shape (K,) per row: the
        training target winnow's default remedy ``soft-all`` gives it — ``suggestion_probs`` for a
        label issue, the average of its one-hot label and ``suggestion_probs`` otherwise), one
        ``score_<name>`` column per scorer.
    """
    import torch

    from .metrics import ranking
    from .models.nets import build_model, check_fits
    from .models.training import train_model
    from .scorers import TrainingContext, default_scorers, get_scorer, parse_scorer_list, probability_scorers
    from .scorers.base import scorer_class
    from .noise_rate import estimate_noise_count  # the same count as `winnow run` (noise_rate.RECOMMENDED)
    from .remedies import soft_targets
    from .review import suggestion_probs
    from .scorers.label_free import second_opinion
    from .stages import default_config

    given = [a for a in (pred_probs, features, images) if a is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of pred_probs, features or images")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if pred_probs is not None:
        probs = np.asarray(pred_probs, dtype=np.float64)
        y = _check_labels(labels, len(probs))
        k_classes = num_classes or probs.shape[1]
        if probs.ndim != 2 or probs.shape[1] != k_classes:
            raise ValueError(f"pred_probs must have shape (n, {k_classes}), got {probs.shape}")
        names = parse_scorer_list(scorers or default_scorers("probs", "none"))
        wrong = [s for s in names if scorer_class(s).needs_model]
        if wrong:
            raise ValueError(f"scorer(s) {', '.join(wrong)} need a model; on pred_probs use {probability_scorers()}")
        ctx = TrainingContext.from_probabilities(probs, y, np.arange(len(y)).astype(str))
    else:
        x = np.asarray(features if features is not None else images)
        kind = "features" if features is not None else "images"
        if kind == "features" and x.ndim != 2:
            raise ValueError(f"features must have shape (n, D), got {x.shape}")
        if kind == "images" and x.ndim != 4:
            raise ValueError(f"images must have shape (n, C, H, W), got {x.shape}")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{kind} must be finite")
        y = _check_labels(labels, len(x))
        k_classes = num_classes or int(y.max()) + 1
        if y.max() >= k_classes:
            raise ValueError(f"labels must lie in [0, {k_classes}), got {int(y.max())}")
        model = "mlp" if kind == "features" else "cnn"
        check_fits(model, kind, x.shape[1:])
        names = parse_scorer_list(scorers or default_scorers(kind, "none"))
        cfg = default_config("parquet", model, epochs, seed, len(y))
        factory = lambda: build_model(model, x.shape[1:], k_classes)  # noqa: E731
        checkpoints = train_model(factory, x, y, cfg).checkpoints
        ctx = TrainingContext(torch.as_tensor(x), torch.as_tensor(y), k_classes, factory, checkpoints, cfg,
                              np.arange(len(y)).astype(str), seed=seed, kfold=folds)
    if len(np.unique(y)) < 2:
        raise ValueError("labels hold a single class: nothing to audit")
    probs = ctx.out_of_sample_probs()
    scores = {n: get_scorer(n)(ctx) for n in names}
    k = estimate_noise_count(y, probs)
    order = ranking(scores[names[0]])
    # the suggestion also asks the label-free probe, as `winnow run` does (not possible on pred_probs)
    second = None if pred_probs is not None else second_opinion(ctx.x, y, k_classes, seed=seed)
    suggestion = suggestion_probs(probs, second)
    issue = np.zeros(len(y), bool)
    issue[order[:k]] = True
    soft = soft_targets(y, issue, suggestion, soften_unflagged=True).astype(np.float32)
    table = pd.DataFrame({"index": order, "label": y[order], "suggested_label": suggestion.argmax(1)[order],
                          "score": scores[names[0]][order], "is_label_issue": issue[order],
                          "suggestion_probs": list(suggestion.astype(np.float32)[order]), "soft_label": list(soft[order])})
    for n in names:
        table[f"score_{n}"] = scores[n][order]
    return table.reset_index(drop=True)
