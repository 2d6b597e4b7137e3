"""Integrated Gradients: completeness per baseline, agreement with Captum, layer IG, validation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from winnow.tasks.data.sources import load_digits
from winnow.tasks.explainers.baselines import (
    BASELINE_KINDS, blur_baseline, class_means, make_baseline, uniform_baseline)
from winnow.tasks.explainers.ig import (
    explain_pair, gradient_x_input, integrated_gradients, layer_integrated_gradients, path_points,
    steps_for_tolerance)
from winnow.tasks.models import TrainConfig, build_model, train_model


@pytest.fixture(scope="module")
def digits_model():
    """A briefly trained CNN in float64 (so quadrature error, not rounding, dominates the gap)."""
    torch.set_num_threads(1)
    ds = load_digits()
    tr = ds.split == "train"
    x, y = torch.tensor(ds.x[tr][:400]), torch.tensor(ds.label[tr][:400])
    res = train_model(lambda: build_model("cnn", (1, 8, 8), 10), x, y, TrainConfig(epochs=15, batch_size=64, seed=0),
                      device=torch.device("cpu"), keep_checkpoints=False)
    model = res.model.double().eval()
    xt = torch.tensor(ds.x[~tr][:6]).double()
    yt = torch.tensor(ds.label[~tr][:6])
    return model, x.double(), y, xt, yt


def _baseline(kind, x, train_x, train_y, y):
    return make_baseline(kind, x, train_x=train_x, train_y=train_y, num_classes=10,
                         contrast=(y + 1) % 10, sigma=1.0, seed=3)


@pytest.mark.parametrize("kind", BASELINE_KINDS)
def test_completeness_gap_shrinks_with_steps(digits_model, kind):
    model, train_x, train_y, x, y = digits_model
    b = _baseline(kind, x, train_x, train_y, y)
    coarse = integrated_gradients(model, x, b, y, steps=2)
    fine = integrated_gradients(model, x, b, y, steps=256)
    # The logit must actually change along the path, or the property is vacuous.
    assert fine.delta.abs().max() > 0.1
    assert torch.all(fine.gap <= 1e-2 * fine.delta.abs() + 1e-4), (fine.gap, fine.delta)
    assert fine.gap.max() < coarse.gap.max()
    # f_input / f_baseline are the model's logits at the two ends.
    assert torch.allclose(fine.f_baseline, model(b).gather(1, y[:, None]).squeeze(1))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"])
def test_matches_captum(digits_model, method):
    from captum.attr import IntegratedGradients

    model, train_x, train_y, x, y = digits_model
    b = blur_baseline(x, 1.0)
    ours = integrated_gradients(model, x, b, y, steps=24, method=method, internal_batch_size=50)
    theirs = IntegratedGradients(model).attribute(x, baselines=b, target=y, n_steps=24, method=method)
    assert torch.allclose(ours.attributions, theirs, atol=1e-9, rtol=1e-7)


def test_trapezoid_is_the_normalised_rule(digits_model):
    """Captum's riemann_trapezoid uses step 1/n at n points (weights sum to (n-1)/n); ours is the
    textbook rule with step 1/(n-1). Same nodes, so the two differ by exactly n/(n-1)."""
    from captum.attr import IntegratedGradients

    model, *_, x, y = digits_model
    n = 16
    ours = integrated_gradients(model, x, torch.zeros_like(x), y, steps=n, method="riemann_trapezoid")
    theirs = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=n,
                                                  method="riemann_trapezoid")
    assert torch.allclose(ours.attributions, theirs * n / (n - 1), atol=1e-9, rtol=1e-7)
    assert abs(path_points(n, "riemann_trapezoid")[1].sum().item() - 1) < 1e-12


@pytest.mark.parametrize("layer", ["body.1", "body.4", "body"])
def test_layer_ig_complete_and_matches_captum(digits_model, layer):
    from captum.attr import LayerIntegratedGradients

    model, train_x, train_y, x, y = digits_model
    b = _baseline("default", x, train_x, train_y, y)
    ours = layer_integrated_gradients(model, layer, x, b, y, steps=128, internal_batch_size=100)
    assert torch.all(ours.gap <= 1e-2 * ours.delta.abs() + 1e-4), (ours.gap, ours.delta)
    theirs = LayerIntegratedGradients(model, model.get_submodule(layer)).attribute(
        x, baselines=b, target=y, n_steps=128, method="gausslegendre")
    assert torch.allclose(ours.attributions, theirs, atol=1e-9, rtol=1e-7)


def test_layer_ig_at_body_is_exact_with_two_steps(digits_model):
    # Above the body only the linear head remains: the gradient is constant along the path.
    model, train_x, train_y, x, y = digits_model
    res = layer_integrated_gradients(model, model.body, x, torch.zeros_like(x), y, steps=2)
    assert res.attributions.shape == (len(x), 128)
    assert res.gap.max() < 1e-10


def test_steps_for_tolerance_meets_tolerance(digits_model):
    model, train_x, train_y, x, y = digits_model
    b = _baseline("mean", x, train_x, train_y, y)
    loose = steps_for_tolerance(model, x, b, y, rtol=1e-1, start=2, max_steps=1024)
    tight = steps_for_tolerance(model, x, b, y, rtol=1e-3, start=2, max_steps=1024)
    assert loose.converged.all() and tight.converged.all()
    assert set(loose.steps) <= set(loose.schedule)
    assert (loose.gap <= 1e-1 * abs(loose.delta) + 1e-4).all()
    assert (tight.gap <= 1e-3 * abs(tight.delta) + 1e-4).all()
    assert (tight.steps >= loose.steps).all() and tight.steps.max() > loose.steps.min()
    # The returned attributions are those of each sample's reported step count.
    again = integrated_gradients(model, x[:1], b[:1], y[:1], steps=int(tight.steps[0]))
    assert torch.allclose(again.attributions, tight.attributions[:1])
    layer = steps_for_tolerance(model, x, b, y, layer="body.1", start=2)
    assert layer.converged.all() and layer.attributions.shape == (len(x), 32, 8, 8)


def test_gradient_x_input_is_exact_ig_for_linear_model():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double()
    x = torch.rand(4, 1, 3, 4, dtype=torch.float64)
    b = torch.rand(4, 1, 3, 4, dtype=torch.float64)
    gxi = gradient_x_input(lin, x, 2, baseline=b)
    ig = integrated_gradients(lin, x, b, 2, steps=1, method="riemann_middle")
    assert torch.allclose(gxi, ig.attributions)
    assert ig.gap.max() < 1e-12


def test_explain_pair_uses_contrast_class_means(digits_model):
    model, train_x, train_y, x, y = digits_model
    s = (y + 3) % 10
    out = explain_pair(model, x, y, s, train_x, train_y, 10, steps=512)
    means = class_means(train_x, train_y, 10)
    f_mean_s = model(means[s]).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(out["given"].f_baseline, f_mean_s)
    f_mean_y = model(means[y]).gather(1, s[:, None]).squeeze(1)
    assert torch.allclose(out["suggested"].f_baseline, f_mean_y)
    for res in out.values():
        assert res.delta.abs().max() > 1.0
        assert torch.all(res.gap <= 1e-2 * res.delta.abs() + 1e-3), (res.gap, res.delta)


def test_baseline_properties():
    x = torch.rand(3, 1, 6, 6)
    const = torch.full_like(x, 0.37)
    assert torch.allclose(blur_baseline(const, 1.5), const, atol=1e-6)
    blurred = blur_baseline(x, 1.0)
    assert blurred.var() < x.var()
    assert torch.equal(uniform_baseline(x, seed=5), uniform_baseline(x, seed=5))
    assert not torch.equal(uniform_baseline(x, seed=5), uniform_baseline(x, seed=6))
    u = uniform_baseline(x, 0.2, 0.4)
    assert u.min() >= 0.2 and u.max() < 0.4
    tx = torch.arange(8.0).view(4, 1, 1, 2)
    ty = torch.tensor([0, 1, 0, 1])
    assert torch.allclose(class_means(tx, ty, 2).flatten(1), torch.tensor([[2.0, 3.0], [4.0, 5.0]]))
    seq = torch.rand(2, 1, 10)
    assert blur_baseline(seq, 1.0).shape == seq.shape


def test_validation_errors(digits_model):
    model, train_x, train_y, x, y = digits_model
    b = torch.zeros_like(x)
    with pytest.raises(ValueError, match="baseline shape"):
        integrated_gradients(model, x, b[:, :, :4], y)
    with pytest.raises(ValueError, match="unknown method"):
        integrated_gradients(model, x, b, y, method="simpson")
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(model, x, b, y, steps=0)
    with pytest.raises(ValueError, match="target class"):
        integrated_gradients(model, x, b, 10)
    with pytest.raises(ValueError, match="target"):
        integrated_gradients(model, x, b, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        integrated_gradients(model, x * float("nan"), b, y)
    with pytest.raises(ValueError, match="no submodule"):
        layer_integrated_gradients(model, "body.99", x, b, y)
    with pytest.raises(ValueError, match="submodule"):
        layer_integrated_gradients(model, nn.ReLU(), x, b, y)
    with pytest.raises(ValueError, match="rtol"):
        steps_for_tolerance(model, x, b, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("white", x)
    with pytest.raises(ValueError, match="needs train_x"):
        make_baseline("default", x)
    with pytest.raises(ValueError, match="no training images"):
        class_means(train_x[:5], torch.zeros(5, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="sigma"):
        blur_baseline(x, 0.0)
