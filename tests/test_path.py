"""The Bézier path: endpoints, the straight-line start, and the gradient that reaches a control point."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mcu_dist.config import ConfigError
from mcu_dist.models import create_model
from mcu_dist.path.bezier import BezierCurve, bernstein, params_of


def _pair(seed: int = 0, name: str = "small_cnn"):
    torch.manual_seed(seed)
    a = create_model(name, 10, 3, 16)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1 * torch.randn_like(p))
    # give each endpoint its own BN statistics
    x = torch.randn(64, 3, 16, 16)
    a.train()(x)
    b.train()(x * 2 + 1)
    return a.eval(), b.eval()


def _buffers(m: nn.Module) -> dict[str, torch.Tensor]:
    return {n: v.clone() for n, v in m.named_buffers()}


@pytest.mark.parametrize(
    ("order", "name"), [(2, "small_cnn"), (3, "small_cnn"), (4, "small_cnn"), (2, "resnet8")]
)
def test_endpoints_reproduce_original_and_baseline_outputs(order, name):
    a, b = _pair(name=name)
    curve = BezierCurve(copy.deepcopy(a), params_of(a), params_of(b), order)
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(curve.materialize(0.0, _buffers(a))(x), a(x), atol=1e-5)
        assert torch.allclose(curve.materialize(1.0, _buffers(b))(x), b(x), atol=1e-5)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_initial_curve_is_the_straight_line(order):
    a, b = _pair()
    curve = BezierCurve(copy.deepcopy(a), params_of(a), params_of(b), order)
    pa, pb = params_of(a), params_of(b)
    for t in (0.0, 0.13, 0.5, 0.77, 1.0):
        w = curve.weights_at(t)
        for n in pa:
            assert torch.allclose(w[n], (1 - t) * pa[n] + t * pb[n], atol=1e-6), (t, n)


def test_resnet8_has_many_tensors_none_holding_half_the_parameters():
    """The CPU model for mask controls: a size-matched random set has other tensors to choose from."""
    model = create_model("resnet8", 10, 3, 32)
    sizes = [p.numel() for p in model.parameters()]
    assert len(sizes) == 29 and 70_000 < sum(sizes) < 80_000
    assert max(sizes) < 0.5 * sum(sizes)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bernstein_coefficients_sum_to_one():
    for n in (2, 3, 5):
        for t in (0.0, 0.3, 1.0):
            assert sum(bernstein(n, t)) == pytest.approx(1.0)


@pytest.mark.parametrize("order", [2, 3])
def test_control_point_gradient_is_bernstein_times_gradient_at_theta_t(order):
    a, b = _pair(name="small_cnn_nobn")
    curve = BezierCurve(copy.deepcopy(a), params_of(a), params_of(b), order)
    with torch.no_grad():  # move the control points off the line so the check is not trivial
        for p in curve.trainable():
            p.add_(0.05 * torch.randn_like(p))
    x, y, t = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,)), 0.37
    nn.functional.cross_entropy(curve(x, t), y).backward()
    plain = curve.materialize(t)
    nn.functional.cross_entropy(plain(x), y).backward()
    coeffs = bernstein(order, t)
    for j in range(1, order):
        for name, p in plain.named_parameters():
            got = curve.point(j, name).grad
            assert torch.allclose(got, coeffs[j] * p.grad, atol=1e-6, rtol=1e-4), (j, name)


def test_endpoints_are_frozen_and_unselected_tensors_are_not_parameters():
    a, b = _pair()
    names = [n for n, _ in a.named_parameters()]
    selected = set(names[:3])
    curve = BezierCurve(copy.deepcopy(a), params_of(a), params_of(b), 3, selected)
    trainable = {id(p) for p in curve.trainable()}
    for j in range(4):
        for n in names:
            is_trainable = id(curve.point(j, n)) in trainable
            assert is_trainable == (0 < j < 3 and n in selected)
    assert not any(p.requires_grad for p in curve.base.parameters())


def test_endpoints_of_different_architectures_are_refused():
    a = create_model("small_cnn", 10, 3, 16)
    b = create_model("small_cnn", 5, 3, 16)
    with pytest.raises(ConfigError, match="endpoints"):
        BezierCurve(a, params_of(a), params_of(b), 2)
    with pytest.raises(ConfigError, match="curve_order"):
        BezierCurve(a, params_of(a), params_of(a), 1)


def _one_chain(curve: BezierCurve, t: float) -> dict[str, torch.Tensor]:
    """θ(t) as a single chain c_0·θ_0 + c_1·θ_1 + ... per tensor, in the order j = 0..n."""
    coeffs = bernstein(curve.order, t)
    out = {}
    for n in curve.names:
        w = torch.mul(curve.point(0, n), coeffs[0])
        for j in range(1, curve.order + 1):
            w = torch.add(w, curve.point(j, n), alpha=coeffs[j])
        out[n] = w
    return out


@pytest.mark.parametrize("order", [2, 3])
def test_masked_weights_equal_one_chain_and_only_selected_tensors_carry_gradient(order):
    a, b = _pair(name="resnet8")
    names = [n for n, _ in a.named_parameters()]
    selected = set(names[::4])
    curve = BezierCurve(copy.deepcopy(a), params_of(a), params_of(b), order, selected)
    with torch.no_grad():  # interior points off the line, the frozen ones too
        for j in range(1, order):
            for n in names:
                curve.point(j, n).add_(0.05 * torch.randn_like(curve.point(j, n)))
    for t in (0.0, 0.29, 0.5, 0.83, 1.0):
        w, ref = curve.weights_at(t), _one_chain(curve, t)
        assert list(w) == names
        for n in names:
            assert torch.equal(w[n], ref[n]), (t, n)  # bitwise: training trajectories do not change
            assert w[n].requires_grad == (n in selected), (t, n)


def test_weights_follow_the_curve_after_it_moves_to_another_dtype():
    a, b = _pair()
    curve = BezierCurve(copy.deepcopy(a), params_of(a), params_of(b), 2)
    first = curve.weights_at(0.4)  # builds the cached tensor lists
    curve.double()  # replaces every tensor: the lists must be rebuilt
    again = curve.weights_at(0.4)
    for n, w in again.items():
        assert w.dtype == torch.float64
        torch.testing.assert_close(w.float(), first[n].detach(), rtol=0, atol=1e-6)
    with torch.no_grad():
        curve.point(1, curve.names[0]).add_(1.0)  # an in-place change is seen without a rebuild
    assert not torch.equal(curve.weights_at(0.4)[curve.names[0]], again[curve.names[0]])


class _Tied(nn.Module):
    """Two layers sharing one weight tensor (named once by named_parameters)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_curve_runs_the_network_on_theta_t_in_every_slot_and_gives_the_slots_back():
    from torch.func import functional_call

    torch.manual_seed(0)
    a, b = _Tied(), _Tied()
    curve = BezierCurve(copy.deepcopy(a), params_of(a), params_of(b), 2)
    assert "b.weight" not in curve.names  # the shared tensor is named once...
    own = {(m, k): p for m in curve.base.modules() for k, p in m._parameters.items()}
    x = torch.randn(5, 4)
    for t in (0.0, 0.3, 1.0):
        got = curve(x, t)
        ref = functional_call(curve.base, curve.weights_at(t), (x,))  # torch's own, ties included
        assert torch.equal(got, ref), t
    assert torch.equal(curve(x, 1.0), b(x))  # ...and fills both slots: θ(1) is the end model
    got.sum().backward()
    assert all(p.grad is not None for p in curve.trainable())
    with pytest.raises(RuntimeError):
        curve(torch.randn(5, 3), 0.5)  # a failing call still gives every slot its own parameter back
    assert all(m._parameters[k] is p for (m, k), p in own.items())
    assert all(isinstance(p, nn.Parameter) for p in own.values())


@pytest.mark.parametrize("order", [2, 3])
def test_control_point_gradients_are_bitwise_those_of_one_plain_chain(order):
    from torch.func import functional_call

    a, b = _pair(name="resnet8")
    names = [n for n, _ in a.named_parameters()]
    curve = BezierCurve(copy.deepcopy(a), params_of(a), params_of(b), order, set(names[::3]))
    with torch.no_grad():
        for p in curve.trainable():
            p.add_(0.05 * torch.randn_like(p))
    x, y, t = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)), 0.61
    curve.base.eval()  # the same forward twice: BN statistics must not move between the two
    nn.functional.cross_entropy(curve(x, t), y).backward()
    fast = [p.grad.clone() for p in curve.trainable()]
    for p in curve.trainable():
        p.grad = None
    nn.functional.cross_entropy(functional_call(curve.base, _one_chain(curve, t), (x,)), y).backward()
    plain = [p.grad for p in curve.trainable()]
    assert len(fast) == len(plain) == (order - 1) * len(names[::3])
    for f, g in zip(fast, plain, strict=True):
        assert torch.equal(f, g)


def test_the_curve_follows_tensors_and_modules_replaced_under_it():
    a, b = _pair(name="resnet8")
    x = torch.randn(4, 3, 16, 16)
    curve = BezierCurve(copy.deepcopy(a), params_of(a), params_of(b), 2)
    curve.base.eval()
    curve(x, 0.5)  # builds the caches
    moved = {k: v + 0.1 for k, v in curve.state_dict().items()}
    curve.load_state_dict(moved, assign=True)  # new tensor objects in every slot
    fresh = BezierCurve(copy.deepcopy(a), params_of(a), params_of(b), 2)
    fresh.load_state_dict(moved)
    fresh.base.eval()
    with torch.no_grad():
        assert torch.equal(curve(x, 0.3), fresh(x, 0.3))
        curve.base = copy.deepcopy(curve.base)  # new modules: the parameter slots are found again
        assert torch.equal(curve(x, 0.3), fresh(x, 0.3))
    assert all(isinstance(p, nn.Parameter) for p in curve.base.parameters())
