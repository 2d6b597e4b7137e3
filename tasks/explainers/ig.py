"""Integrated Gradients with explicit baselines, at the input or at an intermediate layer.

For a model ``f``, a target class ``c``, an input ``x`` and a baseline ``b``,

    IG_i(x) = (x_i - b_i) * integral_0^1 d f_c(b + a (x - b)) / d x_i  da

and completeness says ``sum_i IG_i(x) = f_c(x) - f_c(b)``. Here ``f_c`` is the **logit** of
class ``c`` (pre-softmax output), not the probability: logits are what the classifier's linear
head produces, their differences are the log-odds between classes, and they do not saturate, so
attributions for confident samples are not squashed towards zero.

The integral is a quadrature over ``steps`` points of the straight path; the points of all
samples and several path points are stacked into one batch (``internal_batch_size`` rows per
forward pass). Quadrature rules: ``riemann_trapezoid``, ``riemann_left``, ``riemann_right``,
``riemann_middle`` and ``gausslegendre``, with the same point placement as the usual definitions
so results can be compared with other implementations at equal ``steps``.

Layer IG integrates the gradient with respect to a layer's activation along the straight path
between the baseline's activation and the input's activation (the model is re-run with the layer
output replaced by the path point). Completeness then holds with ``f_c(x) - f_c(b)`` as long as
everything downstream of the layer depends on the input only through that layer (true for
``Classifier.body`` and any submodule of the sequential bodies in :mod:`winnow.tasks.models.nets`;
false for a layer bypassed by a skip connection).

The check is the attribution error ``|sum(attr) - (f_c(x) - f_c(b))|`` per sample (Cui & Fan);
:func:`steps_for_tolerance` doubles ``steps`` until it is under a tolerance.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .baselines import as_class_vector, check_batch, make_baseline

METHODS = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre")


@dataclass
class IGResult:
    """Attributions and the quantities needed to check them.

    Attributes
    ----------
    attributions : torch.Tensor, shape (n, *sample_shape) or (n, *layer_shape)
    f_input : torch.Tensor, shape (n,)
        Target logit at the input.
    f_baseline : torch.Tensor, shape (n,)
        Target logit at the baseline.
    steps : int
    method : str
    """

    attributions: torch.Tensor
    f_input: torch.Tensor
    f_baseline: torch.Tensor
    steps: int
    method: str

    @property
    def delta(self) -> torch.Tensor:
        """``f_c(x) - f_c(b)``, shape (n,)."""
        return self.f_input - self.f_baseline

    @property
    def gap(self) -> torch.Tensor:
        """Attribution error ``|sum(attr) - (f_c(x) - f_c(b))|``, shape (n,)."""
        return attribution_error(self.attributions, self.f_input, self.f_baseline)


def path_points(steps: int, method: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature nodes on [0, 1] and their weights.

    Parameters
    ----------
    steps : int, >= 1 (>= 2 for ``riemann_trapezoid``)
    method : str, one of :data:`METHODS`

    Returns
    -------
    alphas, weights : torch.Tensor, shape (steps,), float64
        ``sum(weights) == 1``; the integral of ``g`` is ``sum(weights * g(alphas))``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    steps = int(steps)
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * w)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("riemann_trapezoid needs steps >= 2 (both path ends)")
        alphas = torch.linspace(0, 1, steps, dtype=torch.float64)
        w = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (steps - 1)
        return alphas, w
    w = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if method == "riemann_left":
        return torch.arange(steps, dtype=torch.float64) / steps, w
    if method == "riemann_right":
        return torch.arange(1, steps + 1, dtype=torch.float64) / steps, w
    return (torch.arange(steps, dtype=torch.float64) + 0.5) / steps, w


def attribution_error(attributions: torch.Tensor, f_input: torch.Tensor, f_baseline: torch.Tensor) -> torch.Tensor:
    """Completeness gap per sample.

    Parameters
    ----------
    attributions : torch.Tensor, shape (n, ...)
    f_input, f_baseline : torch.Tensor, shape (n,)

    Returns
    -------
    torch.Tensor, shape (n,)
        ``|attributions[i].sum() - (f_input[i] - f_baseline[i])|``.
    """
    if attributions.ndim < 1 or f_input.shape != (len(attributions),) or f_baseline.shape != f_input.shape:
        raise ValueError(
            f"need attributions (n, ...) with f_input, f_baseline (n,); got {tuple(attributions.shape)}, "
            f"{tuple(f_input.shape)}, {tuple(f_baseline.shape)}")
    total = attributions.reshape(len(attributions), -1).sum(1)
    return (total - (f_input - f_baseline)).abs()


def _validate(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, target) -> torch.Tensor:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_batch(x)
    check_batch(baseline, "baseline")
    if baseline.shape != x.shape:
        raise ValueError(f"baseline shape {tuple(baseline.shape)} differs from x shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError("x is empty")
    return as_class_vector(target, len(x), None, "target").to(x.device)


@contextmanager
def eval_mode(model: nn.Module):
    # Attributions must not depend on dropout masks or update batch-norm statistics.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _select(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.ndim != 2:
        raise ValueError(f"model must return logits of shape (n, num_classes), got {tuple(logits.shape)}")
    if int(target.max()) >= logits.shape[1]:
        raise ValueError(f"target class {int(target.max())} >= the model's {logits.shape[1]} outputs")
    return logits.gather(1, target[:, None]).squeeze(1)


def _chunks(n: int, steps: int, internal_batch_size: int):
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    sb = min(n, internal_batch_size)
    ab = max(1, internal_batch_size // sb)
    for s0 in range(0, n, sb):
        for a0 in range(0, steps, ab):
            yield slice(s0, min(n, s0 + sb)), slice(a0, min(steps, a0 + ab))


def integrated_gradients(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor,
                         target: torch.Tensor | int, *, steps: int = 64, method: str = "gausslegendre",
                         internal_batch_size: int = 1024) -> IGResult:
    """Integrated Gradients of the target logit with respect to the input.

    Parameters
    ----------
    model : nn.Module
        Maps (n, *sample_shape) to logits (n, num_classes); put in eval mode for the call.
    x : torch.Tensor, shape (n, *sample_shape)
    baseline : torch.Tensor, shape (n, *sample_shape)
        See :mod:`winnow.tasks.explainers.baselines`.
    target : int or torch.Tensor, shape (n,)
        Class whose logit is explained (e.g. the given label, or the suggested label).
    steps : int
        Quadrature points on the path.
    method : str, one of :data:`METHODS`
    internal_batch_size : int
        Rows (sample x path point) per forward pass; bounds memory.

    Returns
    -------
    IGResult
        ``attributions`` has the shape of ``x``; ``gap`` is the completeness error.
    """
    target = _validate(model, x, baseline, target)
    alphas, weights = path_points(steps, method)
    alphas, weights = alphas.to(x.device, x.dtype), weights.to(x.device, x.dtype)
    x, baseline = x.detach(), baseline.detach()
    diff = x - baseline
    avg_grad = torch.zeros_like(x)
    with eval_mode(model):
        with torch.no_grad():
            f_x = _select(model(x), target)
            f_b = _select(model(baseline), target)
        for s, a in _chunks(len(x), len(alphas), internal_batch_size):
            k, m = a.stop - a.start, s.stop - s.start
            shape = (k, m) + tuple(x.shape[1:])
            al = alphas[a].view(k, 1, *([1] * (x.ndim - 1)))
            path = (baseline[s].unsqueeze(0) + al * diff[s].unsqueeze(0)).reshape(k * m, *x.shape[1:])
            path.requires_grad_(True)
            out = _select(model(path), target[s].repeat(k))
            (grad,) = torch.autograd.grad(out.sum(), path)
            wk = weights[a].view(k, 1, *([1] * (x.ndim - 1)))
            avg_grad[s] += (grad.reshape(shape) * wk).sum(0)
    return IGResult(diff * avg_grad, f_x, f_b, int(steps), method)


def _resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"model has no submodule {layer!r}; it has {names[:20]}") from None
    if not isinstance(layer, nn.Module) or not any(m is layer for m in model.modules()):
        raise ValueError("layer must be a submodule of model (or its dotted name)")
    return layer


def _activation(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    store: dict[str, torch.Tensor] = {}

    def grab(_m, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"layer output must be a single tensor, got {type(out).__name__}")
        store["a"] = out.detach()

    handle = layer.register_forward_hook(grab)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if "a" not in store:
        raise ValueError("layer was not called during the model's forward pass")
    return store["a"], logits


def layer_integrated_gradients(model: nn.Module, layer: nn.Module | str, x: torch.Tensor,
                               baseline: torch.Tensor, target: torch.Tensor | int, *, steps: int = 64,
                               method: str = "gausslegendre", internal_batch_size: int = 1024) -> IGResult:
    """Integrated Gradients with respect to an intermediate layer's activation.

    The path runs from the baseline's activation ``A(b)`` to the input's activation ``A(x)`` in
    activation space (not through the activations of interpolated inputs), so completeness is
    ``sum(attr) = f_c(x) - f_c(b)`` whenever the rest of the network sees the input only through
    the layer.

    Parameters
    ----------
    model : nn.Module
    layer : nn.Module or str
        A submodule of ``model`` with a single-tensor output (e.g. ``model.body`` or ``"body.1"``).
    x, baseline : torch.Tensor, shape (n, *sample_shape)
    target : int or torch.Tensor, shape (n,)
    steps, method, internal_batch_size :
        As in :func:`integrated_gradients`.

    Returns
    -------
    IGResult
        ``attributions`` has shape (n, *layer_output_shape).
    """
    target = _validate(model, x, baseline, target)
    layer = _resolve_layer(model, layer)
    alphas, weights = path_points(steps, method)
    alphas, weights = alphas.to(x.device, x.dtype), weights.to(x.device, x.dtype)
    x, baseline = x.detach(), baseline.detach()
    with eval_mode(model):
        with torch.no_grad():
            a_x, logits_x = _activation(model, layer, x)
            a_b, logits_b = _activation(model, layer, baseline)
        f_x, f_b = _select(logits_x, target), _select(logits_b, target)
        diff = a_x - a_b
        avg_grad = torch.zeros_like(a_x)
        feats = a_x.ndim - 1
        replacement: dict[str, torch.Tensor] = {}
        handle = layer.register_forward_hook(lambda _m, _i, _o: replacement["a"])
        try:
            for s, a in _chunks(len(x), len(alphas), internal_batch_size):
                k, m = a.stop - a.start, s.stop - s.start
                al = alphas[a].view(k, 1, *([1] * feats))
                path = (a_b[s].unsqueeze(0) + al * diff[s].unsqueeze(0)).reshape(k * m, *a_x.shape[1:])
                path.requires_grad_(True)
                replacement["a"] = path
                # The upstream input is irrelevant (its layer output is replaced); x keeps shapes valid.
                xin = x[s].unsqueeze(0).expand(k, *x[s].shape).reshape(k * m, *x.shape[1:])
                out = _select(model(xin), target[s].repeat(k))
                (grad,) = torch.autograd.grad(out.sum(), path)
                wk = weights[a].view(k, 1, *([1] * feats))
                avg_grad[s] += (grad.reshape(k, m, *a_x.shape[1:]) * wk).sum(0)
        finally:
            handle.remove()
    return IGResult(diff * avg_grad, f_x, f_b, int(steps), method)


@dataclass
class StepsSearch:
    """Outcome of :func:`steps_for_tolerance`.

    Attributes
    ----------
    steps : np.ndarray, shape (n,), int
        First step count of the schedule whose gap met the tolerance; -1 where none did.
    gap : np.ndarray, shape (n,)
        Attribution error at that step count (at ``max_steps`` where none met it).
    delta : np.ndarray, shape (n,)
        ``f_c(x) - f_c(b)``.
    schedule : list[int]
        Step counts tried.
    attributions : torch.Tensor
        Attributions at each sample's reported step count.
    """

    steps: np.ndarray
    gap: np.ndarray
    delta: np.ndarray
    schedule: list[int]
    attributions: torch.Tensor

    @property
    def converged(self) -> np.ndarray:
        return self.steps > 0


def steps_for_tolerance(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor | int,
                        *, rtol: float = 1e-2, atol: float = 1e-4, start: int = 4, max_steps: int = 1024,
                        method: str = "gausslegendre", layer: nn.Module | str | None = None,
                        internal_batch_size: int = 1024) -> StepsSearch:
    """Double ``steps`` until each sample's attribution error is under tolerance.

    A sample meets the tolerance at ``steps`` when
    ``|sum(attr) - (f_c(x) - f_c(b))| <= rtol * |f_c(x) - f_c(b)| + atol``
    (``atol`` keeps samples whose logit barely changes along the path from demanding an
    impossible relative precision). Samples that met it are not recomputed.

    Parameters
    ----------
    model, x, baseline, target : as in :func:`integrated_gradients`
    rtol, atol : float, >= 0, not both zero
    start : int
        First step count; the schedule is ``start, 2 start, 4 start, ... <= max_steps``.
    max_steps : int
    method : str
    layer : nn.Module or str, optional
        Check layer IG at this layer instead of input IG.
    internal_batch_size : int

    Returns
    -------
    StepsSearch
    """
    if rtol < 0 or atol < 0 or (rtol == 0 and atol == 0):
        raise ValueError(f"need rtol >= 0, atol >= 0, not both 0; got rtol={rtol}, atol={atol}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 1:
        raise ValueError(f"start must be a positive int, got {start!r}")
    if method == "riemann_trapezoid" and start < 2:
        raise ValueError("riemann_trapezoid needs start >= 2")
    if not isinstance(max_steps, int) or max_steps < start:
        raise ValueError(f"max_steps must be an int >= start ({start}), got {max_steps!r}")
    target = _validate(model, x, baseline, target)
    schedule = []
    s = start
    while s <= max_steps:
        schedule.append(s)
        s *= 2
    n = len(x)
    steps_out = np.full(n, -1, dtype=np.int64)
    gap_out = np.full(n, np.nan)
    delta_out = np.full(n, np.nan)
    attributions: torch.Tensor | None = None
    pending = torch.arange(n, device=x.device)
    for s in schedule:
        if layer is None:
            res = integrated_gradients(model, x[pending], baseline[pending], target[pending], steps=s,
                                       method=method, internal_batch_size=internal_batch_size)
        else:
            res = layer_integrated_gradients(model, layer, x[pending], baseline[pending], target[pending],
                                             steps=s, method=method, internal_batch_size=internal_batch_size)
        if attributions is None:
            attributions = torch.zeros((n,) + tuple(res.attributions.shape[1:]), dtype=x.dtype, device=x.device)
        gap, delta = res.gap, res.delta
        ok = gap <= rtol * delta.abs() + atol
        idx = pending.cpu().numpy()
        gap_out[idx] = gap.detach().cpu().numpy()
        delta_out[idx] = delta.detach().cpu().numpy()
        attributions[pending] = res.attributions.detach()
        steps_out[idx[ok.cpu().numpy()]] = s
        pending = pending[~ok]
        if len(pending) == 0:
            break
    return StepsSearch(steps_out, gap_out, delta_out, schedule, attributions)


def gradient_x_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int,
                     baseline: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of the target logit at ``x`` times ``x - baseline`` (one-point IG).

    This is the first-order Taylor estimate of ``f_c(x) - f_c(b)`` split over features: cheap
    (one backward pass) and therefore what EDDA uses while training; it is exact only for
    models linear along the path.

    Parameters
    ----------
    model : nn.Module
    x : torch.Tensor, shape (n, *sample_shape)
    target : int or torch.Tensor, shape (n,)
    baseline : torch.Tensor, shape (n, *sample_shape), optional
        Defaults to zeros (classic gradient x input).

    Returns
    -------
    torch.Tensor, shape (n, *sample_shape)
    """
    if baseline is None:
        baseline = torch.zeros_like(x) if isinstance(x, torch.Tensor) else None
    target = _validate(model, x, baseline, target)
    xin = x.detach().clone().requires_grad_(True)
    with eval_mode(model):
        out = _select(model(xin), target)
        (grad,) = torch.autograd.grad(out.sum(), xin)
    return grad * (x.detach() - baseline.detach())


def explain_pair(model: nn.Module, x: torch.Tensor, given: torch.Tensor | int, suggested: torch.Tensor | int,
                 train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, *, steps: int = 64,
                 method: str = "gausslegendre", layer: nn.Module | str | None = None,
                 internal_batch_size: int = 1024) -> dict[str, IGResult]:
    """Contrastive IG for flagged samples with winnow's default baseline.

    ``"given"``: attributions of the given label's logit against the mean image of the
    suggested class; ``"suggested"``: of the suggested label's logit against the mean image of
    the given class. Pixels with positive ``"suggested"`` attribution are where the sample looks
    more like the suggested class than a typical image of its given class does.

    Parameters
    ----------
    model : nn.Module
    x : torch.Tensor, shape (n, *sample_shape)
    given, suggested : int or torch.Tensor, shape (n,)
    train_x : torch.Tensor, shape (m, *sample_shape)
    train_y : torch.Tensor, shape (m,)
    num_classes : int
    steps, method, layer, internal_batch_size :
        As in :func:`integrated_gradients` / :func:`layer_integrated_gradients`.

    Returns
    -------
    dict with keys ``"given"`` and ``"suggested"``, each an :class:`IGResult`.
    """
    check_batch(x)
    given = as_class_vector(given, len(x), num_classes, "given").to(x.device)
    suggested = as_class_vector(suggested, len(x), num_classes, "suggested").to(x.device)
    out = {}
    for name, tgt, contrast in (("given", given, suggested), ("suggested", suggested, given)):
        b = make_baseline("default", x, train_x=train_x, train_y=train_y, num_classes=num_classes, contrast=contrast)
        if layer is None:
            out[name] = integrated_gradients(model, x, b, tgt, steps=steps, method=method,
                                             internal_batch_size=internal_batch_size)
        else:
            out[name] = layer_integrated_gradients(model, layer, x, b, tgt, steps=steps, method=method,
                                                   internal_batch_size=internal_batch_size)
    return out
