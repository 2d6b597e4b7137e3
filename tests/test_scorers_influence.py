"""influence: exact last layer against an explicit inverse of autograd's Hessian; EK-FAC against
exact full-model influence; train -> test form; the scorer; input validation."""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from winnow.tasks.data.noise import symmetric
from winnow.tasks.models import TrainConfig, build_model
from winnow.tasks.models.nets import mlp
from winnow.tasks.models.training import train_model
from winnow.tasks.scorers import TrainingContext, get_scorer
from winnow.tasks.scorers.gradients import per_sample_grad_sq_norms
from winnow.tasks.scorers.influence import (
    ekfac_self_influence,
    fit_ekfac,
    head_hessian,
    influence_on_test,
    last_layer_self_influence,
    self_influence,
)

DAMPING = 0.01


class Exact:
    """Exact influence for a set of named parameters of a float64 model (autograd Hessian)."""

    def __init__(self, model, x, y, names):
        self.model, self.x, self.y, self.names = model, x, y, names
        params = dict(model.named_parameters())
        self.fixed = {k: p.detach() for k, p in params.items() if k not in names}
        self.shapes = [params[k].shape for k in names]
        self.theta = torch.cat([params[k].detach().reshape(-1) for k in names])

    def _unflat(self, flat):
        out, i = {}, 0
        for k, s in zip(self.names, self.shapes):
            out[k] = flat[i:i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def logits(self, flat, x):
        return functional_call(self.model, {**self.fixed, **self._unflat(flat)}, (x,))

    def hessian(self):
        def mean_loss(flat):
            return F.cross_entropy(self.logits(flat, self.x), self.y)
        return torch.autograd.functional.hessian(mean_loss, self.theta, vectorize=True)

    def grads(self, x, y):
        def one(flat, xi, yi):
            return F.cross_entropy(self.logits(flat, xi[None]), yi[None], reduction="sum")
        return vmap(grad(one), in_dims=(None, 0, 0))(self.theta, x, y)

    def inverse(self, damping=DAMPING):
        h = self.hessian()
        return torch.linalg.inv(h + damping * torch.eye(len(h), dtype=h.dtype))


@pytest.fixture(scope="module")
def trained_tiny_mlp():
    """A 64-12-10 MLP trained on 200 digits with 20% flips, in float64."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:200] / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(symmetric(d.target[:200], 10, 0.2, 0))
    result = train_model(lambda: mlp((1, 8, 8), 10, hidden=(12,)), x, y,
                         TrainConfig(epochs=20, batch_size=32, lr=0.05), device=torch.device("cpu"))
    return result.model.double().eval(), x.double(), y


def test_last_layer_self_influence_equals_explicit_inverse_of_autograd_hessian(trained_tiny_mlp):
    model, x, y = trained_tiny_mlp
    exact = Exact(model, x, y, ["head.weight", "head.bias"])
    g = exact.grads(x, y)
    expected = ((g @ exact.inverse()) * g).sum(1).numpy()
    got = last_layer_self_influence(model, x, y, damping=DAMPING, batch_size=64)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_head_hessian_is_autograd_hessian_reordered(trained_tiny_mlp):
    model, x, y = trained_tiny_mlp
    feats = model.body(x).detach()
    h = head_hessian(feats, model.head(feats).detach())
    c, k = 10, feats.shape[1] + 1
    # autograd orders θ as [vec(W), b]; head_hessian as rows of [W | b]
    perm = [ci * (k - 1) + j if j < k - 1 else c * (k - 1) + ci for ci in range(c) for j in range(k)]
    auto = Exact(model, x, y, ["head.weight", "head.bias"]).hessian()
    torch.testing.assert_close(h, auto[perm][:, perm], rtol=1e-8, atol=1e-10)


def test_last_layer_train_to_test_equals_explicit_formula(trained_tiny_mlp):
    model, x, y = trained_tiny_mlp
    exact = Exact(model, x, y, ["head.weight", "head.bias"])
    x_test, y_test = x[:3] + 0.05, torch.tensor([1, 2, 3])
    g_test = exact.grads(x_test, y_test).sum(0)
    expected = -(exact.grads(x, y) @ (exact.inverse() @ g_test)).numpy()
    got = influence_on_test(model, x, y, x_test, y_test, damping=DAMPING, batch_size=50)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-10)


@pytest.mark.slow
def test_ekfac_tracks_exact_full_model_influence(trained_tiny_mlp):
    """EK-FAC vs the exact (autograd Hessian, 910 parameters) full-model influence.

    The exact Hessian of this ReLU net is indefinite (smallest eigenvalue about -0.06 to -0.16
    across seeds), which EK-FAC's Gauss-Newton cannot represent; with λ below that magnitude
    the exact g^T (H+λI)^-1 g is itself ill-posed (negative, near-singular: Spearman fell to
    0.05-0.75 at λ = 0.01-0.1). So the damping is 0.1 above |λ_min|, making H + λI positive
    definite. Measured there on four model/noise seeds: self-influence Spearman 0.994-0.997
    (fisher mc and exact alike), train->test 0.72-0.90. Asserted: > 0.97 and > 0.6.
    """
    model, x, y = trained_tiny_mlp
    exact = Exact(model, x, y, [k for k, _ in model.named_parameters()])
    h = exact.hessian()
    damping = 0.1 + max(0.0, -float(torch.linalg.eigvalsh(h).min()))
    inv = torch.linalg.inv(h + damping * torch.eye(len(h), dtype=h.dtype))
    g = exact.grads(x, y)
    expected = ((g @ inv) * g).sum(1).numpy()
    assert expected.min() > 0
    for fisher in ("mc", "exact"):
        got = self_influence(model, x, y, variant="ekfac", damping=damping, fisher=fisher, batch_size=64)
        rho = spearmanr(got, expected)[0]
        assert rho > 0.97, (fisher, rho)
    x_test, y_test = x[:2] + 0.05, torch.tensor([4, 7])
    expected_tt = -(g @ (inv @ exact.grads(x_test, y_test).sum(0))).numpy()
    got_tt = influence_on_test(model, x, y, x_test, y_test, variant="ekfac", fisher="exact", damping=damping)
    assert spearmanr(got_tt, expected_tt)[0] > 0.6


@pytest.mark.parametrize("kind,shape", [("cnn", (1, 8, 8)), ("cnn1d", (3, 20)), ("mlp", (1, 8, 8))])
def test_ekfac_rotations_are_exact_in_the_large_damping_limit(kind, shape):
    """(Ĥ + λI)⁻¹ → I/λ, so λ·self-influence → ‖g‖² and λ·train->test → -g_testᵀg exactly:
    checks the conv unfolding, bias handling and eigenbasis rotations independently of Λ."""
    torch.manual_seed(0)
    model = build_model(kind, shape, 10).double().eval()
    x, y = torch.randn(30, *shape, dtype=torch.float64), torch.randint(0, 10, (30,))
    lam = 1e9
    ek = fit_ekfac(model, x, batch_size=16)
    got = lam * ekfac_self_influence(model, ek, x, y, damping=lam, batch_size=16)
    np.testing.assert_allclose(got, per_sample_grad_sq_norms(model, x, y), rtol=1e-5)
    names = [k for k, _ in model.named_parameters()]
    exact = Exact(model, x, y, names)
    expected = -(exact.grads(x, y) @ exact.grads(x[:2], y[:2]).sum(0)).numpy()
    got = lam * influence_on_test(model, x, y, x[:2], y[:2], variant="ekfac", damping=lam, batch_size=16)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8 * np.abs(expected).max())


def test_influence_scorer_both_variants_on_a_context():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:150] / 16.0, dtype=torch.float32)[:, None]
    ctx = TrainingContext(x, torch.tensor(d.target[:150]), 10, lambda: build_model("cnn", (1, 8, 8), 10), [],
                          TrainConfig(epochs=2, batch_size=32), np.array([f"d{i}" for i in range(150)]))
    ctx.checkpoints = ctx.train().checkpoints
    last = get_scorer("influence")(ctx)
    np.testing.assert_allclose(last, last_layer_self_influence(ctx.model_at(-1), ctx.x, ctx.y), rtol=1e-9)
    assert np.all(last > 0)
    full = get_scorer("influence", variant="ekfac", batch_size=64)(ctx)
    assert full.shape == (150,) and np.all(full > 0)
    with pytest.raises(ValueError, match="unknown options"):
        get_scorer("influence", dampening=0.1)(ctx)


def test_bad_inputs_raise_value_error(trained_tiny_mlp):
    model, x, y = trained_tiny_mlp
    with pytest.raises(ValueError, match="variant"):
        self_influence(model, x, y, variant="lissa")
    with pytest.raises(ValueError, match="damping"):
        last_layer_self_influence(model, x, y, damping=-1)
    with pytest.raises(ValueError, match="y must have shape"):
        last_layer_self_influence(model, x, y[:, None])
    with pytest.raises(ValueError, match="rows but y has"):
        influence_on_test(model, x, y, x[:2], y[:3])
    with pytest.raises(ValueError, match="test samples have shape"):
        influence_on_test(model, x, y, torch.zeros(2, 1, 4, 4), y[:2])
    with pytest.raises(ValueError, match="at least one"):
        influence_on_test(model, x, y, x[:0], y[:0])
    with pytest.raises(ValueError, match="fisher"):
        fit_ekfac(model, x, fisher="empirical")
    with pytest.raises(ValueError, match="ekfac must be"):
        ekfac_self_influence(model, None, x, y)
    with pytest.raises(ValueError, match="features"):
        head_hessian(torch.zeros(3, 4), torch.zeros(2, 10))
    with pytest.raises(ValueError, match="positive definite"):
        last_layer_self_influence(model, x, y, damping=0.0)
