"""Per-sample gradient pieces shared by TracIn and influence functions.

The expensive quantity behind gradient-based scorers is, for every training sample ``i``, a
function of that sample's own loss gradient ``∇_θ ℓ(θ, z_i)`` (cross-entropy, "sum" reduction:
sample ``i`` contributes only its own term). Materialising one full gradient per sample costs
``n × |θ|`` memory traffic; this module avoids it wherever the layer structure allows:

* ``nn.Linear`` on (B, in) inputs: the per-sample weight gradient is the outer product
  ``g_i a_iᵀ`` of the layer's output gradient and input, so ``‖∇W_i‖² = ‖a_i‖²‖g_i‖²`` and
  ``‖∇b_i‖² = ‖g_i‖²``.
* ``nn.Conv1d`` / ``nn.Conv2d`` (and ``nn.Linear`` on (B, T, in) inputs): the weight gradient
  is a sum of outer products over output positions ``p``, ``D_i = Σ_p g_p a_pᵀ`` with ``a_p``
  the unfolded input patch. Its squared norm is computed either by materialising the small
  (out × in·k) matrix per sample (one batched matmul) or by the Gram identity
  ``‖Σ_p g_p a_pᵀ‖² = Σ_{p,q} (a_p·a_q)(g_p·g_q)``, whichever costs fewer FLOPs for the layer
  (``_sum_outer_sq_norm``). For the nets in :mod:`winnow.tasks.models.nets` the materialised
  form wins everywhere; measured on the Fashion-MNIST CNN (1,024 samples, one CPU thread):
  conv1 (784 positions, 32×9 weights) 0.10 s vs 13.6 s for Gram, conv2 (196 positions, 64×288)
  0.39 s vs 1.58 s. Gram only pays off with many channels and few positions. The materialised
  norm of a convolution skips ``F.unfold``'s whole-batch patch tensor: a few samples at a time
  are copied into a patch buffer that stays in cache (``_conv_sq_norm``), the same FLOPs; on
  conv2 (256 samples, one thread) 0.029 s vs 0.073 s with unfold.

Both come from **one** batched forward pass (forward hooks record each layer's input and output)
and **one** batched backward pass from the logits to the recorded outputs
(``torch.autograd.grad``; no parameter gradient is ever formed). Data are streamed in batches,
so memory is bounded by the batch size, not by ``n``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
LAYER_CHOICES = ("all", "head")
# Above this many float elements a per-sample temporary is split into sub-batches.
_TEMP_ELEMENTS = 1 << 25
# Patch buffer of _conv_sq_norm, in elements: 4 MiB of float32, inside this machine's L2 + L3 share.
_CACHE_ELEMENTS = 1 << 20


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------

def as_inputs(model: nn.Module, x, y=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate and convert ``x`` (n, ...) and ``y`` (n,) to tensors in the model's dtype."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    if not params:
        raise ValueError("model has no parameters")
    x = torch.as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (n, *sample_shape), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        x = x.float()
    x = x.to(params[0].dtype)
    if y is None:
        return x, None
    y = torch.as_tensor(y)
    if y.ndim != 1:
        raise ValueError(f"y must have shape (n,), got shape {tuple(y.shape)}")
    if len(y) != len(x):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if torch.is_floating_point(y):
        if not torch.equal(y, y.round()):
            raise ValueError("y must hold integer class labels")
    y = y.long()
    return x, y


def check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _check_labels(y: torch.Tensor, num_classes: int) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) (the model has {num_classes} outputs), "
                         f"got range [{int(y.min())}, {int(y.max())}]")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def head_of(model: nn.Module) -> nn.Linear:
    """The model's last layer, ``model.head``, which must be an ``nn.Linear`` (see nets.py)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError("last-layer methods need model.head to be an nn.Linear "
                         f"(got {type(head).__name__ if head is not None else 'no head attribute'})")
    return head


def trainable_layers(model: nn.Module, layers: str = "all") -> list[nn.Module]:
    """Modules whose own parameters are trainable, in registration order.

    Parameters
    ----------
    layers : {"all", "head"}
        ``"head"`` returns ``[model.head]`` only.

    Raises
    ------
    ValueError
        If a module with trainable parameters is not Linear/Conv1d/Conv2d (its per-sample
        gradient has no cheap form here), or if nothing is trainable.
    """
    if layers not in LAYER_CHOICES:
        raise ValueError(f"layers must be one of {LAYER_CHOICES}, got {layers!r}")
    if layers == "head":
        head = head_of(model)
        if not any(p.requires_grad for p in head.parameters(recurse=False)):
            raise ValueError("model.head has no trainable parameters")
        return [head]
    found = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(module, SUPPORTED_LAYERS):
            raise ValueError(f"layer {name!r} ({type(module).__name__}) has trainable parameters but per-sample "
                             f"gradients are only implemented for {[c.__name__ for c in SUPPORTED_LAYERS]}")
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"layer {name!r}: unsupported padding_mode {module.padding_mode!r}")
        found.append(module)
    if not found:
        raise ValueError("model has no trainable parameters")
    return found


# --------------------------------------------------------------------------------------------
# layer signals: (input patches, output gradients) per layer, from one forward + one backward
# --------------------------------------------------------------------------------------------

@dataclass
class LayerSignal:
    """One layer's per-sample gradient factors for a batch.

    The per-sample weight gradient of sample ``b`` (group ``γ``) is ``g[bγ] @ a[bγ]ᵀ`` summed
    over positions, i.e. ``Σ_p g[bγ, :, p] a[bγ, :, p]ᵀ``; the bias gradient is ``Σ_p g[bγ, :, p]``.

    Attributes
    ----------
    module : nn.Module
    inp : torch.Tensor
        The layer's input as recorded; for convolutions already padded and 4-D (B, C_in, H, W)
        (a Conv1d input gets H = 1), so neither ``a`` nor the squared-norm path pads again.
    g : torch.Tensor, shape (B * groups, O, P)
        Gradients of the loss w.r.t. the layer's outputs (O = out_channels/groups).
    groups : int
    weight : bool
        Whether the weight is trainable (counted).
    bias : bool
        Whether the layer has a trainable bias (counted).
    a : torch.Tensor, shape (B * groups, I, P)
        Inputs (unfolded patches for convolutions; I = in_channels/groups · kernel size),
        formed on first use: the squared-norm path of a convolution never needs them.
    """

    module: nn.Module
    inp: torch.Tensor
    g: torch.Tensor
    groups: int
    weight: bool
    bias: bool

    @property
    def batch(self) -> int:
        return self.g.shape[0] // self.groups

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, (nn.Conv1d, nn.Conv2d))

    @cached_property
    def a(self) -> torch.Tensor:
        if not self.is_conv:
            return self.inp.reshape(self.batch, -1, self.inp.shape[-1]).transpose(1, 2)
        kernel, stride, dilation = _conv_geometry(self.module)
        a = F.unfold(self.inp, kernel, dilation=dilation, stride=stride)   # (B, C_in·k, P)
        if self.groups > 1:
            a = a.reshape(self.batch * self.groups, a.shape[1] // self.groups, a.shape[2])
        return a


def _conv_geometry(module: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, dilation) of a Conv1d/Conv2d as 2-D tuples (Conv1d: a 1 × k kernel)."""
    if isinstance(module, nn.Conv1d):
        return (1, module.kernel_size[0]), (1, module.stride[0]), (1, module.dilation[0])
    return tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation)


def _padded_conv_input(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """A Conv1d/Conv2d input padded as the layer pads it, as (B, C_in, H, W)."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            padding = (0,) * len(module.kernel_size)
        else:  # "same" (stride 1): symmetric padding only exists for odd effective kernels
            totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
            if any(t % 2 for t in totals):
                raise ValueError(f"{type(module).__name__} with padding='same' and an even effective kernel "
                                 "is not supported")
            padding = tuple(t // 2 for t in totals)
    else:
        padding = tuple(module.padding)
    if module.padding_mode != "zeros":
        inp = F.pad(inp, module._reversed_padding_repeated_twice, mode=module.padding_mode)
    elif any(padding):
        pads = []
        for p in reversed(padding):  # F.pad wants (last dim left, right, next-to-last left, right, ...)
            pads += [p, p]
        inp = F.pad(inp, pads)
    return inp.unsqueeze(2) if isinstance(module, nn.Conv1d) else inp


def _conv_sq_norm(sig: LayerSignal) -> torch.Tensor:
    """``‖∇W_b‖²`` of a convolution's weight for every sample b, shape (B,).

    Per sub-batch of a few samples, the kernel-offset views of the padded input are copied into
    a patch buffer small enough to stay in cache, and one batched matmul per sub-batch forms the
    (O × C_in/G·k) weight gradients: the FLOPs of ``g @ aᵀ`` without ``F.unfold``'s whole-batch
    patch tensor, which is k times the input and falls out of cache. The buffer follows the
    input's memory format (positions-major for channels_last) so each copy reads contiguously.
    """
    (kh, kw), (sh, sw), (dh, dw) = _conv_geometry(sig.module)
    x, g, groups = sig.inp, sig.g, sig.groups                     # (B, C, H, W), (B·G, O, P)
    h_out = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    w_out = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    c_g, kk = x.shape[1] // groups, kh * kw
    nhwc = x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)
    chunk = max(1, _CACHE_ELEMENTS // (kk * x.shape[1] * h_out * w_out))
    out = []
    for s in range(0, sig.batch, chunk):
        xs = x[s:s + chunk]
        b = xs.shape[0]
        if nhwc:
            buf = x.new_empty(b, groups, h_out, w_out, kk, c_g)
        else:
            buf = x.new_empty(b, groups, kk, c_g, h_out, w_out)
        for i in range(kh):
            for j in range(kw):
                view = xs[:, :, i * dh: i * dh + sh * (h_out - 1) + 1: sh,
                          j * dw: j * dw + sw * (w_out - 1) + 1: sw].unflatten(1, (groups, c_g))
                if nhwc:
                    buf[:, :, :, :, i * kw + j] = view.permute(0, 1, 3, 4, 2)
                else:
                    buf[:, :, i * kw + j] = view
        gs = g[s * groups:(s + b) * groups]
        if nhwc:
            patches = buf.view(b * groups, h_out * w_out, kk * c_g).transpose(1, 2)    # (b·G, K, P)
        else:
            patches = buf.view(b * groups, kk * c_g, h_out * w_out)
        # the transposed product has the same norm; it is the fast one when g is position-major
        # (the gradient of a channels_last output): both operands are then read row by row
        if gs.stride(1) == 1 and gs.shape[1] > 1:
            d = torch.bmm(patches, gs.transpose(1, 2))
        else:
            d = torch.bmm(gs, patches.transpose(1, 2))
        out.append((d * d).sum((1, 2)))
    return torch.cat(out)


def _signal(module: nn.Module, inp: torch.Tensor, grad_out: torch.Tensor) -> LayerSignal:
    weight = module.weight.requires_grad
    bias = module.bias is not None and module.bias.requires_grad
    batch = inp.shape[0]
    if isinstance(module, nn.Linear):
        g = grad_out.reshape(batch, -1, grad_out.shape[-1]).transpose(1, 2)
        return LayerSignal(module, inp, g, 1, weight, bias)
    groups = module.groups
    g = grad_out.reshape(batch, grad_out.shape[1], -1)  # (B, C_out, P)
    if groups > 1:
        g = g.reshape(batch * groups, g.shape[1] // groups, g.shape[2])
    return LayerSignal(module, _padded_conv_input(module, inp), g, groups, weight, bias)


def ce_residual(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂/∂logits of the summed cross-entropy: ``softmax(z) - onehot(y)``, shape (B, C)."""
    r = torch.softmax(logits, dim=1)
    r[torch.arange(len(y), device=r.device), y] -= 1
    return r


ResidualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def iter_layer_signals(
    model: nn.Module,
    x: torch.Tensor,
    index_residuals: ResidualFn,
    modules: list[nn.Module],
    batch_size: int = 256,
) -> Iterator[tuple[torch.Tensor, list[list[LayerSignal]]]]:
    """Stream per-layer gradient factors over ``x`` in batches.

    Parameters
    ----------
    model : nn.Module
        Mapping (B, *sample_shape) -> logits (B, C).
    x : torch.Tensor, shape (n, *sample_shape)
    index_residuals : callable
        ``index_residuals(logits, idx) -> (K, B, C)``: K pseudo-gradients w.r.t. the logits for
        the batch rows ``idx`` (K = 1 and :func:`ce_residual` for the cross-entropy of the given
        labels; more for Fisher expectations). Each is back-propagated separately.
    modules : list of nn.Module
        Layers to record, from :func:`trainable_layers`.

    Yields
    ------
    idx : torch.Tensor, shape (B,), int64 row indices
    signals : list (length K) of list (one per module) of :class:`LayerSignal`
    """
    device = model_device(model)
    records: dict[nn.Module, list] = {m: [] for m in modules}

    def hook(module, inputs, output):
        records[module].append((inputs[0].detach(), output))

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        for start in range(0, len(x), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(x)))
            for rec in records.values():
                rec.clear()
            with torch.enable_grad():
                logits = model(x[idx].to(device))
                if logits.ndim != 2:
                    raise ValueError(f"model must return logits of shape (B, C), got {tuple(logits.shape)}")
                for m, rec in records.items():
                    if len(rec) != 1:
                        raise ValueError(f"layer {type(m).__name__} ran {len(rec)} times in one forward pass; "
                                         "shared (re-used) layers are not supported")
                outs = [records[m][0][1] for m in modules]
                for o in outs:
                    if not o.requires_grad:
                        raise ValueError("a recorded layer output does not require grad; is the model frozen?")
                residuals = index_residuals(logits.detach(), idx)
                signals = []
                for k in range(len(residuals)):
                    grads = torch.autograd.grad(logits, outs, grad_outputs=residuals[k],
                                                retain_graph=k + 1 < len(residuals))
                    signals.append([_signal(m, records[m][0][0], go.detach()) for m, go in zip(modules, grads)])
            yield idx, signals
    finally:
        for h in handles:
            h.remove()
        for rec in records.values():
            rec.clear()


# --------------------------------------------------------------------------------------------
# squared norms
# --------------------------------------------------------------------------------------------

def _sum_outer_sq_norm(a: torch.Tensor, g: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """``‖Σ_p g[b,:,p] a[b,:,p]ᵀ‖_F²`` for every b, without a Python loop.

    Parameters
    ----------
    a : shape (B, I, P)
    g : shape (B, O, P)
    method : {"auto", "materialise", "gram"}
        ``materialise`` forms the (B, O, I) matrices (cost P·O·I per sample); ``gram`` uses
        ``Σ_{p,q}(a_p·a_q)(g_p·g_q)`` (cost P²·(I+O)); ``auto`` picks the cheaper.

    Returns
    -------
    torch.Tensor, shape (B,)
    """
    batch, i_dim, p_dim = a.shape
    o_dim = g.shape[1]
    method = _reduction(method, i_dim, o_dim, p_dim)
    if p_dim == 1:
        return (a * a).sum((1, 2)) * (g * g).sum((1, 2))
    per_sample = o_dim * i_dim if method == "materialise" else p_dim * p_dim
    chunk = max(1, _TEMP_ELEMENTS // max(per_sample, 1))
    out = []
    for s in range(0, batch, chunk):
        ac, gc = a[s:s + chunk], g[s:s + chunk]
        if method == "materialise":
            d = torch.bmm(gc, ac.transpose(1, 2))
            out.append((d * d).sum((1, 2)))
        else:
            ga = torch.bmm(ac.transpose(1, 2), ac)
            gg = torch.bmm(gc.transpose(1, 2), gc)
            out.append((ga * gg).sum((1, 2)))
    return torch.cat(out)


def _reduction(method: str, i_dim: int, o_dim: int, p_dim: int) -> str:
    """``auto`` -> the cheaper of materialise (P·O·I FLOPs per sample) and Gram (P²·(I+O))."""
    if method not in ("auto", "materialise", "gram"):
        raise ValueError(f"method must be 'auto', 'materialise' or 'gram', got {method!r}")
    if method != "auto":
        return method
    return "materialise" if o_dim * i_dim <= p_dim * (i_dim + o_dim) else "gram"


def signal_sq_norm(sig: LayerSignal, method: str = "auto") -> torch.Tensor:
    """Per-sample squared gradient norm of one layer's trainable parameters, shape (B,)."""
    total = torch.zeros(sig.g.shape[0], dtype=sig.g.dtype, device=sig.g.device)
    if sig.weight:
        o_dim, p_dim = sig.g.shape[1:]
        i_dim = sig.module.weight[0].numel()
        if sig.is_conv and p_dim > 1 and _reduction(method, i_dim, o_dim, p_dim) == "materialise":
            total = total + _conv_sq_norm(sig)
        else:
            total = total + _sum_outer_sq_norm(sig.a, sig.g, method)
    if sig.bias:
        gb = sig.g.sum(2)
        total = total + (gb * gb).sum(1)
    return total.reshape(sig.batch, sig.groups).sum(1)


def per_sample_grad_sq_norms(
    model: nn.Module,
    x,
    y,
    *,
    layers: str = "all",
    batch_size: int = 256,
    method: str = "auto",
) -> np.ndarray:
    """``‖∇_θ ℓ(θ, z_i)‖²`` for every sample, without per-sample gradients where avoidable.

    ``ℓ`` is the cross-entropy of sample ``i`` alone. The model is used as given (call it in
    eval mode; dropout would make the gradients random).

    Parameters
    ----------
    model : nn.Module
        Trainable layers must be Linear/Conv1d/Conv2d (see :func:`trainable_layers`).
    x : array-like, shape (n, *sample_shape)
        Cast to the model's dtype; moved to the model's device batch by batch.
    y : array-like, shape (n,), int
    layers : {"all", "head"}
        ``"head"``: only ``model.head`` (weights and bias), computed from the features and
        the softmax residual without back-propagating through the body.
    batch_size : int
    method : {"auto", "materialise", "gram"}
        How multi-position layers (convolutions) are reduced; see ``_sum_outer_sq_norm``.

    Returns
    -------
    np.ndarray, shape (n,), float64
    """
    x, y = as_inputs(model, x, y)
    batch_size = check_batch_size(batch_size)
    if method not in ("auto", "materialise", "gram"):
        raise ValueError(f"method must be 'auto', 'materialise' or 'gram', got {method!r}")
    modules = trainable_layers(model, layers)
    out = np.zeros(len(x))
    if len(x) == 0:
        return out
    if layers == "head":
        head = modules[0]
        with_bias = head.bias is not None and head.bias.requires_grad
        with_weight = head.weight.requires_grad
        for idx, feats, logits in iter_head_features(model, x, batch_size):
            _check_labels(y[idx], logits.shape[1])
            r = ce_residual(logits, y[idx].to(logits.device))
            r2 = (r * r).sum(1)
            val = r2 * ((feats * feats).sum(1) if with_weight else 0.0) + (r2 if with_bias else 0.0)
            out[idx.numpy()] = val.double().cpu().numpy()
        return out

    def residuals(logits, idx):
        yb = y[idx].to(logits.device)
        _check_labels(yb, logits.shape[1])
        return ce_residual(logits, yb).unsqueeze(0)

    for idx, signals in iter_layer_signals(model, x, residuals, modules, batch_size):
        total = sum(signal_sq_norm(s, method) for s in signals[0])
        out[idx.numpy()] = total.double().cpu().numpy()
    return out


def per_sample_grad_dots(
    model: nn.Module,
    x,
    y,
    vectors: dict[nn.Module, tuple[torch.Tensor | None, torch.Tensor | None]],
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """``⟨∇_θ ℓ(θ, z_i), v⟩`` for every sample and one fixed parameter-space vector ``v``.

    Parameters
    ----------
    model : nn.Module
    x : array-like, shape (n, *sample_shape)
    y : array-like, shape (n,), int
    vectors : dict
        ``{module: (v_weight, v_bias)}`` with ``v_weight`` shaped like ``module.weight`` and
        ``v_bias`` like ``module.bias`` (either may be None = zero). Modules absent from the
        dict contribute nothing.

    Returns
    -------
    np.ndarray, shape (n,), float64
    """
    x, y = as_inputs(model, x, y)
    batch_size = check_batch_size(batch_size)
    if not isinstance(vectors, dict) or not vectors:
        raise ValueError("vectors must be a non-empty dict {module: (v_weight, v_bias)}")
    allowed = set(trainable_layers(model, "all"))
    for m, (vw, vb) in vectors.items():
        if m not in allowed:
            raise ValueError(f"vectors names a module ({type(m).__name__}) that is not a trainable layer of the model")
        if vw is not None and tuple(vw.shape) != tuple(m.weight.shape):
            raise ValueError(f"v_weight has shape {tuple(vw.shape)}, expected {tuple(m.weight.shape)}")
        if vb is not None and (m.bias is None or tuple(vb.shape) != tuple(m.bias.shape)):
            raise ValueError(f"v_bias has shape {tuple(vb.shape)}, expected "
                             f"{None if m.bias is None else tuple(m.bias.shape)}")
    modules = [m for m in trainable_layers(model, "all") if m in vectors]
    out = np.zeros(len(x))

    def residuals(logits, idx):
        yb = y[idx].to(logits.device)
        _check_labels(yb, logits.shape[1])
        return ce_residual(logits, yb).unsqueeze(0)

    for idx, signals in iter_layer_signals(model, x, residuals, modules, batch_size):
        total = 0.0
        for sig in signals[0]:
            vw, vb = vectors[sig.module]
            if vw is not None and sig.weight:
                o_g = sig.g.shape[1]
                vmat = vw.to(sig.a).reshape(sig.groups, o_g, -1)                      # (G, O, I)
                g = sig.g.reshape(sig.batch, sig.groups, o_g, -1)
                a = sig.a.reshape(sig.batch, sig.groups, sig.a.shape[1], -1)
                total = total + torch.einsum("bgop,goi,bgip->b", g, vmat, a)
            if vb is not None and sig.bias:
                gb = sig.g.sum(2).reshape(sig.batch, -1)
                total = total + gb @ vb.to(gb).reshape(-1)
        out[idx.numpy()] = torch.as_tensor(total).double().cpu().numpy()
    return out


def checkpoint_grad_sq_norms(ctx, layers: str = "all", batch_size: int = 256) -> np.ndarray:
    """Per-sample squared gradient norms at every checkpoint of a TrainingContext, cached.

    Computed once per ``layers`` and kept in ``ctx._cache`` so that every scorer built on them
    (tracin, tracin-last, gradient-norm rankings) shares one pass per checkpoint.

    Returns
    -------
    np.ndarray, shape (T, n), float64 (do not modify: it is the cached copy)
    """
    if layers not in LAYER_CHOICES:
        raise ValueError(f"layers must be one of {LAYER_CHOICES}, got {layers!r}")
    if not ctx.checkpoints:
        raise ValueError("per-checkpoint gradient norms need the training checkpoints, and the context has none")
    key = ("per_sample_grad_sq_norms", layers)
    if key not in ctx._cache:
        ctx._cache[key] = np.stack([
            per_sample_grad_sq_norms(ctx.model_at(t), ctx.x, ctx.y, layers=layers, batch_size=batch_size)
            for t in range(len(ctx.checkpoints))
        ])
    return ctx._cache[key]


# --------------------------------------------------------------------------------------------
# last layer: features and cheap per-sample gradients g_i ⊗ [a_i, 1]
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def iter_head_features(model: nn.Module, x: torch.Tensor, batch_size: int = 128
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Stream ``(idx, features, logits)``: the input of ``model.head`` and the model's output.

    ``x`` is a tensor or a :class:`~winnow.tasks.models.rows.Rows` (read a batch at a time, never
    whole).

    Shapes: idx (B,), features (B, d), logits (B, C); on the model's device.
    """
    from ..models.rows import Rows

    head = head_of(model)
    device = model_device(model)
    box = []
    handle = head.register_forward_hook(lambda m, inp, out: box.append(inp[0]))
    try:
        for start in range(0, len(x), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(x)))
            box.clear()
            logits = model((x.take(idx) if isinstance(x, Rows) else x[idx]).to(device))
            if len(box) != 1 or box[0].ndim != 2:
                raise ValueError("model.head must be called exactly once per forward pass on (B, d) features")
            yield idx, box[0], logits
    finally:
        handle.remove()


def head_features(model: nn.Module, x, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Features entering ``model.head`` and the logits, for all of ``x``.

    Returns
    -------
    features : torch.Tensor, shape (n, d), on the CPU, model dtype
    logits : torch.Tensor, shape (n, C), on the CPU
    """
    x, _ = as_inputs(model, x)
    batch_size = check_batch_size(batch_size)
    feats, logits = [], []
    for _, f, z in iter_head_features(model, x, batch_size):
        feats.append(f.cpu())
        logits.append(z.cpu())
    if not feats:
        raise ValueError("x is empty")
    return torch.cat(feats), torch.cat(logits)


def head_grads(features: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients of the cross-entropy w.r.t. the head's ``θ = [W | b]``.

    The gradient of sample i is the outer product ``r_i ⊗ [f_i, 1]`` with ``r_i = softmax(z_i)
    - onehot(y_i)``, flattened row-major: entry ``c·(d+1) + j`` is ``∂ℓ_i/∂θ[c, j]``, where
    column ``d`` is the bias.

    Parameters
    ----------
    features : shape (n, d)
    logits : shape (n, C)
    y : shape (n,), int

    Returns
    -------
    torch.Tensor, shape (n, C·(d+1)), dtype of ``features``
    """
    if features.ndim != 2 or logits.ndim != 2 or y.ndim != 1:
        raise ValueError(f"need features (n, d), logits (n, C), y (n,); got {tuple(features.shape)}, "
                         f"{tuple(logits.shape)}, {tuple(y.shape)}")
    if not len(features) == len(logits) == len(y):
        raise ValueError(f"row counts differ: {len(features)}, {len(logits)}, {len(y)}")
    _check_labels(y, logits.shape[1])
    r = ce_residual(logits.to(features.dtype), y.to(logits.device))
    aug = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype, device=features.device)], 1)
    return (r[:, :, None] * aug[:, None, :]).reshape(len(features), -1)


# --------------------------------------------------------------------------------------------
# reference implementation (validation and benchmarks only: materialises every gradient)
# --------------------------------------------------------------------------------------------

def vmap_per_sample_sq_norms(model: nn.Module, x, y, *, batch_size: int = 16) -> np.ndarray:
    """Reference: ``‖∇_θ ℓ_i‖²`` over all trainable parameters via ``torch.func.vmap(grad)``.

    Materialises a (B, |θ|) gradient per batch; same result as
    :func:`per_sample_grad_sq_norms` with ``layers="all"``, at much higher cost.

    Returns
    -------
    np.ndarray, shape (n,), float64
    """
    from torch.func import functional_call, grad, vmap

    x, y = as_inputs(model, x, y)
    batch_size = check_batch_size(batch_size)
    device = model_device(model)
    # NCHW weights: vmap's batched convolutions run ~1.4x slower on channels_last ones (the CNN
    # of nets.py), and a reference should run in its own best layout
    params = {k: v.detach().contiguous() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, xi, yi):
        z = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(z, yi.unsqueeze(0), reduction="sum")

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    out = np.zeros(len(x))
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        grads = per_sample(params, x[sl].to(device), y[sl].to(device))
        total = sum((gr.reshape(gr.shape[0], -1) ** 2).sum(1) for gr in grads.values())
        out[sl] = total.double().cpu().numpy()
    return out
