"""A second opinion from features that never saw a label: patch k-means features and a linear probe.

Every view of one trained model (its loss, AUM, the k-NN vote in its penultimate layer) fails
where that model fails: a small CNN trained on 4,000 noisy CIFAR images is right on fewer than half
of the clean test images, and it has partly learned the annotators' mistakes. A representation
learned *without labels* cannot have learned them. For images, winnow uses the single-layer
network of Coates, Lee & Ng (2011, "An analysis of single-layer networks in unsupervised feature
learning"): small patches, contrast-normalised and ZCA-whitened; k-means centroids; each image
encoded by the "triangle" activation of every patch (how much closer the patch is to a centroid
than to the average centroid), summed over the four quadrants. Other inputs (tabular rows, a
team's embeddings) are their own label-free space, standardised.

On that space two views, each blind to what the audited model learned:

* the **probe**: a ridge-regularised least-squares fit from the features to the one-hot *given*
  labels (one d × d solve; as good as a logistic regression here at a twentieth of the cost),
  scored by how far the best other class beats the given one;
* the **vote**: the given label's share among the k nearest neighbours (cosine) in that space.

Everything here is pure: arrays in, arrays out.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

#: centroids of the patch dictionary (Coates et al. reach ~70% on CIFAR-10 with 1,600; 200 matched
#: 400 on the CIFAR-10N cells here, at half the encoding time)
CENTROIDS = 200
#: patches sampled to fit the whitening and the centroids
FIT_PATCHES = 100_000
#: k-means iterations (Lloyd)
KMEANS_ITERATIONS = 10
#: the ridge probe's penalty (per sample, on standardised features); chosen on the detection grid
RIDGE = 0.03
#: the probe is fitted on at most this many rows (class-stratified), then scores every row
PROBE_FIT_ROWS = 32_768
#: images are encoded at most this many pixels a side (area-averaged down first): the encoding
#: costs per patch position, and the features were designed for 32×32 images
MAX_SIDE = 32
#: patches drawn from each image the dictionary is fitted on
PATCHES_PER_IMAGE = 16
#: the patch dictionary is fitted on at most this many images
ENCODER_FIT_ROWS = -(-FIT_PATCHES // PATCHES_PER_IMAGE)
#: rows wider than this (not images) are projected to this many dimensions before the probe
MAX_WIDTH = 2048
#: neighbours of the label-free vote (k = 20: larger neighbourhoods helped the penultimate vote)
VOTE_K = 20
#: added to each patch's variance before dividing by its standard deviation: 10 on a 0..255 scale,
#: as in the paper, so flat patches are not blown up
CONTRAST_FLOOR = 10.0 / 255.0 ** 2
#: past PROBE_FIT_ROWS rows, the vote searches this many principal directions of the features
VOTE_DIMENSIONS = 128


def patch_size(side: int) -> int:
    """Patch side for images of ``side`` pixels: 6 from 24 pixels up (Coates et al.'s choice for
    32×32), else a third of the side, at least 3."""
    return 6 if side >= 24 else max(3, side // 3)


def _contrast_normalised(patches: torch.Tensor) -> torch.Tensor:
    """Each patch (row) minus its mean, over its standard deviation (floored by :data:`CONTRAST_FLOOR`)."""
    patches = patches - patches.mean(1, keepdim=True)
    return patches / torch.sqrt(patches.var(1, keepdim=True, unbiased=False) + CONTRAST_FLOOR)


class PatchDictionary:
    """Whitening and centroids fitted on one image set's patches; :meth:`encode` gives features.

    Parameters
    ----------
    images : shape (n, c, h, w), float in [0, 1] (h, w >= 3)
    centroids, seed : dictionary size and the seed of the patch sample and k-means start
    stride : pixels between encoded patches
    """

    def __init__(self, images: np.ndarray | torch.Tensor, centroids: int = CENTROIDS, seed: int = 0,
                 stride: int = 1):
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        if x.ndim != 4 or min(x.shape[2:]) < 3:
            raise ValueError(f"images must have shape (n, channels, height, width) with sides >= 3, got {tuple(x.shape)}")
        if len(x) == 0 or not torch.isfinite(x).all():
            raise ValueError("images must be non-empty and finite")
        if centroids < 2 or stride < 1:
            raise ValueError(f"centroids must be >= 2 and stride >= 1, got {centroids} and {stride}")
        self.size = patch_size(min(x.shape[2:]))
        # every position (stride 1, the paper's best); stride 2 encodes a quarter of the patches but
        # lost 0.012–0.034 AUROC on Fashion-MNIST and CIFAR-10N cells
        self.stride = stride
        self.positions = tuple((side - self.size) // self.stride + 1 for side in x.shape[2:])
        self.shape = tuple(x.shape[1:])
        g = torch.Generator().manual_seed(seed)
        images = torch.randperm(len(x), generator=g)[:ENCODER_FIT_ROWS]
        width = x.shape[1] * self.size ** 2
        drawn = []
        offsets = torch.arange(self.size)
        for start in range(0, len(images), 256):  # 256 images at a time; the same draws as unfold + gather
            chosen = images[start:start + 256]
            pick = torch.randint(self.positions[0] * self.positions[1], (len(chosen), PATCHES_PER_IMAGE), generator=g)
            # only the drawn patches are cut out, (image, row, column) indexed; laid out as unfold does
            top, left = (pick // self.positions[1]) * self.stride, (pick % self.positions[1]) * self.stride
            patches = x[chosen].permute(0, 2, 3, 1)[torch.arange(len(chosen))[:, None, None, None],
                                                    (top[:, :, None] + offsets)[:, :, :, None],
                                                    (left[:, :, None] + offsets)[:, :, None, :]]
            drawn.append(patches.permute(0, 1, 4, 2, 3).reshape(-1, width))
        p = _contrast_normalised(torch.cat(drawn))
        n_fit = len(p)
        self.mean = p.mean(0)
        centred = (p - self.mean).double()
        values, vectors = torch.linalg.eigh(centred.T @ centred / max(1, n_fit - 1))
        # ZCA on the normalised patches; the eigenvalue floor (0.1, the paper's) damps pixel noise
        self.zca = (vectors @ torch.diag(1.0 / torch.sqrt(values.clamp(min=0) + 0.1)) @ vectors.T).float()
        white = (p - self.mean) @ self.zca
        k = min(centroids, n_fit)
        centres = white[torch.randperm(n_fit, generator=g)[:k]].clone()
        for _ in range(KMEANS_ITERATIONS):
            nearest = _nearest(white, centres)
            sums = torch.zeros_like(centres).index_add_(0, nearest, white)
            counts = torch.bincount(nearest, minlength=k)
            empty = counts == 0  # an empty cluster restarts on a random patch
            centres = torch.where(empty[:, None], white[torch.randint(n_fit, (k,), generator=g)],
                                  sums / counts.clamp(min=1)[:, None].float())
        self.centres = centres
        self.centres_sq = (centres * centres).sum(1)

    @property
    def width(self) -> int:
        """Features per image: 4 quadrants × centroids."""
        return 4 * len(self.centres)

    def encode(self, images: np.ndarray | torch.Tensor, batch: int | None = None) -> np.ndarray:
        """Triangle activations summed over the image's quadrants.

        Parameters
        ----------
        images : shape (m, c, h, w), the dictionary's image shape
        batch : images encoded at a time; by default about 4,096 patch positions' worth (the
            (centroids × positions) block then stays in cache: 32 CIFAR images at a time ran 1.4×
            slower per image than 5)

        Returns
        -------
        np.ndarray, shape (m, 4 · centroids), float32, quadrant-major
        """
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"images must have shape (m, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        ph, pw = self.positions
        batch = batch or max(1, 4096 // (ph * pw))
        c, width = self.shape[0], len(self.mean)
        # One convolution gives every position's projections on the ZCA rows. Filters centred to zero
        # mean turn p·w into (p − mean(p))·w, so the contrast normalisation is left as a per-position
        # scale: no patch is ever materialised. The distances to the centroids are then one batched
        # matrix product of the whitened positions (a filter bank with the centroids folded in does
        # the same multiplications no faster, and needs an offset term for the mean).
        filters = self.zca - self.zca.mean(0)
        filters = filters.T.reshape(width, c, self.size, self.size).contiguous()
        box = torch.full((1, c, self.size, self.size), 1.0 / width)  # a patch's mean, per position
        white_mean = (self.mean @ self.zca)[:, None]
        # which quadrant each patch position is summed into, as a (positions, 4) 0/1 matrix
        rows, cols = np.divmod(np.arange(ph * pw), pw)
        quadrant = 2 * (rows >= (ph + 1) // 2) + (cols >= (pw + 1) // 2)
        pool = torch.as_tensor(-np.eye(4, dtype=np.float32)[quadrant])  # negated: see the triangle
        out = np.empty((len(x), self.width), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(x), batch):
                # a copy in the standard layout: a one-channel batch can carry channels-last strides
                # (rows gathered from a torch tensor), and the convolution then sums in another order
                b = x[start:start + batch].clone(memory_format=torch.contiguous_format)
                # a constant per image changes neither (p − mean(p)) nor the variance; taking it off
                # keeps mean(p²) − mean(p)² accurate in float32 when pixels are far from 0
                b.sub_(b.double().mean((1, 2, 3), keepdim=True).float())
                projected = F.conv2d(b, filters, stride=self.stride).reshape(len(b), width, -1)
                mean = F.conv2d(b, box, stride=self.stride).reshape(len(b), 1, -1)
                inv_sd = (F.conv2d(b * b, box, stride=self.stride).reshape(len(b), 1, -1) - mean * mean
                          ).clamp_(min=0).add_(CONTRAST_FLOOR).rsqrt_()
                white = torch.addcmul(-white_mean, projected, inv_sd)  # (B, width, positions)
                # |z − centre|² = |centre|² − 2 centre·z + |z|², in place from here on
                squares = self.centres_sq[None, :, None] + (white * white).sum(1, keepdim=True)
                dist = torch.baddbmm(squares, self.centres.expand(len(b), -1, -1), white, alpha=-2.0)
                dist.clamp_(min=0).sqrt_()  # (B, centroids, positions)
                # triangle max(0, mean − distance), kept negated (min(0, distance − mean)) to save a pass
                dist.sub_(dist.mean(1, keepdim=True)).clamp_(max=0)
                out[start:start + len(b)] = torch.matmul(dist, pool).transpose(1, 2).reshape(len(b), -1).numpy()
        return out


def _nearest(points: torch.Tensor, centres: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Index of each point's nearest centre, ``block`` points at a time (the (block × centres)
    distances stay in cache; numpy's argmin is 3× torch's on rows of 200): shape (len(points),)."""
    squares = (centres * centres).sum(1)
    nearest = np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), block):
        nearest[start:start + block] = torch.addmm(squares, points[start:start + block], centres.T,
                                                   alpha=-2.0).numpy().argmin(1)
    return torch.from_numpy(nearest)


def _encoded_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(height, width) an image of ``shape`` (c, h, w) is encoded at: at most :data:`MAX_SIDE` a side."""
    h, w = shape[-2:]
    scale = min(1.0, MAX_SIDE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _downsampled(images: np.ndarray) -> np.ndarray:
    """``images`` (m, c, h, w) area-averaged down to :func:`_encoded_shape` (unchanged when small)."""
    size = _encoded_shape(images.shape)
    if size == tuple(images.shape[-2:]):
        return images
    return F.adaptive_avg_pool2d(torch.as_tensor(images, dtype=torch.float32), size).numpy()


def fit_encoder(sample: np.ndarray, seed: int = 0, centroids: int = CENTROIDS) -> Callable[[np.ndarray], np.ndarray]:
    """The label-free encoder fitted on ``sample``: patch k-means features for images (m, c, h, w)
    whose sides are at least 8 pixels once brought to at most :data:`MAX_SIDE` a side, else the
    rows flattened (projected to :data:`MAX_WIDTH` dimensions when wider). Returns
    ``encode(x) -> (len(x), d)`` float32."""
    sample = np.asarray(sample)
    if sample.ndim == 4 and min(_encoded_shape(sample.shape)) >= 8:
        dictionary = PatchDictionary(_downsampled(sample), centroids, seed)
        return lambda x: dictionary.encode(_downsampled(np.asarray(x, dtype=np.float32)))
    width = int(np.prod(sample.shape[1:]))
    if width <= MAX_WIDTH:
        return lambda x: np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    # wider rows: a seeded Gaussian projection (distances kept up to a few %, Johnson–Lindenstrauss),
    # so the probe's d × d solve stays small
    projection = np.random.default_rng(seed).normal(size=(width, MAX_WIDTH)).astype(np.float32) / np.sqrt(MAX_WIDTH)
    return lambda x: np.asarray(x, dtype=np.float32).reshape(len(x), -1) @ projection


def ridge_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = RIDGE
                ) -> tuple[np.ndarray, np.ndarray]:
    """Least squares from ``features`` to the one-hot given labels, with an L2 penalty.

    Parameters
    ----------
    features : shape (m, d), standardised
    labels : shape (m,), int in [0, num_classes)
    alpha : penalty per sample, relative to the unit variance of each standardised feature

    Returns
    -------
    weights : shape (d, num_classes), float64
    bias : shape (num_classes,), float64 — the class shares (features are centred)
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    m, d = x.shape
    onehot = F.one_hot(torch.as_tensor(labels, dtype=torch.int64), num_classes).double()
    bias = onehot.mean(0)
    gram = x.T @ x / m + alpha * torch.eye(d, dtype=torch.float64)
    weights = torch.linalg.solve(gram, x.T @ (onehot - bias) / m)
    return weights.numpy(), bias.numpy()


def probe_doubt(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The probe's best other class's score minus the given label's: shape (n,), higher = more doubt."""
    scores = np.asarray(features, dtype=np.float64) @ weights + bias
    rows = np.arange(len(labels))
    own = scores[rows, labels].copy()
    scores[rows, labels] = -np.inf
    return scores.max(1) - own


def _take(x, rows: np.ndarray) -> np.ndarray:
    from ..models.rows import Rows

    if isinstance(x, Rows):
        return x.take(torch.as_tensor(rows)).numpy()
    return np.asarray(x[torch.as_tensor(rows)] if isinstance(x, torch.Tensor) else x[rows], dtype=np.float32)


def _finite(block: np.ndarray) -> np.ndarray:
    if not np.isfinite(block).all():
        raise ValueError("x must be finite")
    return block


def _checked(x, labels, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    n = len(labels)
    if len(x) != n:
        raise ValueError(f"x has {len(x)} rows but labels has {n}")
    if n < 3 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be at least 3 integers in [0, {num_classes}), got {n} of dtype {labels.dtype}")
    if len(np.unique(labels)) < 2:
        raise ValueError("labels must hold at least two classes")
    return labels


def _fitted_space(x, labels: np.ndarray, num_classes: int, seed: int, block: int):
    """The label-free space fitted on (a class-stratified sample of at most :data:`PROBE_FIT_ROWS`
    of) the rows: ``(features, fit rows, their features)``, where ``features(rows)`` encodes and
    standardises any other rows of ``x``."""
    from .neighbors import reference_rows

    fit = reference_rows(labels, num_classes, cap=PROBE_FIT_ROWS, seed=seed, k=1)
    # the encoder sees at most ENCODER_FIT_ROWS rows (all of them up to that: the dictionary then
    # samples its patches exactly as from the whole set); the fit rows are encoded a block at a time
    few = fit if len(fit) <= ENCODER_FIT_ROWS else np.sort(
        np.random.default_rng(seed).choice(fit, ENCODER_FIT_ROWS, replace=False))
    encode = fit_encoder(_finite(_take(x, few)), seed)
    fitted = np.concatenate([encode(_finite(_take(x, fit[i:i + block]))) for i in range(0, len(fit), block)])
    mean, scale = fitted.mean(0), fitted.std(0) + 1e-6

    def features(rows: np.ndarray) -> np.ndarray:
        return (encode(_finite(_take(x, rows))) - mean) / scale

    return features, fit, (fitted - mean) / scale


def label_free_views(x, labels: np.ndarray, num_classes: int, seed: int = 0, k: int = VOTE_K,
                     block: int = 4096, vote: bool = True) -> dict[str, np.ndarray]:
    """The two label-free views of a training set: the probe's doubt and the k-NN vote's disagreement.

    Up to :data:`PROBE_FIT_ROWS` samples, everything is fitted and searched on every row. Past it,
    the encoder, the standardisation and the probe are fitted on a class-stratified sample of
    :data:`PROBE_FIT_ROWS` rows, the vote searches the sample of
    :func:`~winnow.tasks.scorers.neighbors.reference_size` rows the penultimate vote uses, in the
    top :data:`VOTE_DIMENSIONS` principal directions of the sample's features, and the rows are
    encoded ``block`` at a time (never all at once).

    Parameters
    ----------
    x : shape (n, ...) — a tensor, an array or streamed :class:`~winnow.tasks.models.rows.Rows`
    labels : shape (n,), int in [0, num_classes) — the given labels
    vote : bool
        Also take the vote (``knn``); the probe alone costs one encoding and one d × d solve.

    Returns
    -------
    dict with ``"probe"`` (and ``"knn"`` when ``vote``), each shape (n,), float64, higher = more
    suspicious
    """
    from .neighbors import knn_votes, label_disagreement, reference_rows, reference_size

    labels = _checked(x, labels, num_classes)
    n = len(labels)
    k = min(k, n - 2)
    features, fit, fitted = _fitted_space(x, labels, num_classes, seed, block)
    weights, bias = ridge_probe(fitted, labels[fit], num_classes)
    if len(fit) == n:  # every row fitted: one encoding serves the probe and an exact vote
        out = {"probe": probe_doubt(fitted, labels, weights, bias)}
        if vote:
            out["knn"] = label_disagreement(knn_votes(fitted, fitted, labels, num_classes, k=k, exclude_self=True),
                                            labels)
        return out
    # past PROBE_FIT_ROWS: the vote in the sample's top principal directions, the rows streamed
    if vote:  # ``fitted`` is standardised, so centred: its principal directions are its right singular vectors
        basis = np.linalg.svd(fitted, full_matrices=False)[2][:VOTE_DIMENSIONS].T.astype(np.float32)
        ref = reference_rows(labels, num_classes, cap=max(reference_size(n), k + 1), seed=seed, k=k)
        reference = features(ref) @ basis
        own = np.full(n, -1, dtype=np.int64)
        own[ref] = np.arange(len(ref))
    out = {"probe": np.empty(n), **({"knn": np.empty(n)} if vote else {})}
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        feats = features(rows)
        out["probe"][rows] = probe_doubt(feats, labels[rows], weights, bias)
        if vote:
            votes = knn_votes(feats @ basis, reference, labels[ref], num_classes, k=k, self_rows=own[rows])
            out["knn"][rows] = label_disagreement(votes, labels[rows])
    return out


#: folds of the cross-fitted probe (:func:`cross_fitted_probe`)
PROBE_FOLDS = 5


def cross_fitted_probe(x, labels: np.ndarray, num_classes: int, seed: int = 0, folds: int = PROBE_FOLDS,
                       block: int = 4096) -> np.ndarray:
    """The probe's class scores for every row from a probe that did not fit that row: a second
    opinion on the true class that neither saw the row's label nor learned from the audited model.

    The fit rows (all rows up to :data:`PROBE_FIT_ROWS`, else a class-stratified sample) are split
    into ``folds`` seeded folds and each fold is scored by the probe fitted on the others; the rows
    outside the sample are scored by the probe fitted on all of it, ``block`` at a time.

    Parameters
    ----------
    x : shape (n, ...) — a tensor, an array or streamed :class:`~winnow.tasks.models.rows.Rows`
    labels : shape (n,), int in [0, num_classes) — the given labels
    folds : int, at least 2

    Returns
    -------
    np.ndarray, shape (n, num_classes), float64 — higher = more likely (least-squares scores, not
    probabilities)
    """
    labels = _checked(x, labels, num_classes)
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    n = len(labels)
    features, fit, fitted = _fitted_space(x, labels, num_classes, seed, block)
    if len(fit) < folds:
        raise ValueError(f"need at least {folds} rows for {folds} folds, got {len(fit)}")
    scores = np.empty((n, num_classes))
    fold_of = np.random.default_rng(seed + 1).permutation(len(fit)) % folds
    for f in range(folds):
        held = fold_of == f
        weights, bias = ridge_probe(fitted[~held], labels[fit[~held]], num_classes)
        scores[fit[held]] = fitted[held] @ weights + bias
    if len(fit) < n:
        weights, bias = ridge_probe(fitted, labels[fit], num_classes)
        rest = np.setdiff1d(np.arange(n), fit)
        for start in range(0, len(rest), block):
            rows = rest[start:start + block]
            scores[rows] = features(rows) @ weights + bias
    return scores


def probe_probabilities(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The probe's class scores as probabilities: a softmax at the temperature under which the
    given labels are most likely (one scalar, fitted by maximum likelihood; least-squares scores
    have no scale of their own).

    Parameters
    ----------
    scores : shape (n, C) — e.g. :func:`cross_fitted_probe`
    labels : shape (n,), int in [0, C) — the given labels

    Returns
    -------
    np.ndarray, shape (n, C), float64, rows summing to 1
    """
    from scipy.optimize import minimize_scalar

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or len(scores) != len(labels) or not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite with shape (n, C) and n = {len(labels)}, got {scores.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]})")
    shifted = scores - scores.max(1, keepdims=True)
    rows = np.arange(len(labels))

    def log_softmax(log_beta):
        z = shifted * np.exp(log_beta)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    best = minimize_scalar(lambda b: -log_softmax(b)[rows, labels].mean(), bounds=(-5.0, 8.0), method="bounded").x
    return np.exp(log_softmax(best))


def second_opinion(x, labels: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """:func:`cross_fitted_probe` as :func:`probe_probabilities`: shape (n, num_classes), float64.
    What the suggested labels, ``relabel-agreed`` and ``relabel-soft`` add to the out-of-sample folds."""
    return probe_probabilities(cross_fitted_probe(x, labels, num_classes, seed=seed), np.asarray(labels))
