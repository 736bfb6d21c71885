"""How evaluation runs a model: forward pieces, the folded channels_last copy, attacks on threads.

Each is a speed-up that must not change what is measured: the same predictions (up to rounding),
the caller's model untouched, the same attack verdicts as fits run one after another.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mcu_dist.config import AccelConfig, ConfigError
from mcu_dist.evaluate.inference import eval_copy
from mcu_dist.evaluate.metrics import forward_in_pieces, predict
from mcu_dist.evaluate.mia import attack_verdicts, attacks
from mcu_dist.models import create_model


def _outputs(model, lab, piece=0):
    s, b = lab.splits, lab.bundle
    kw = {"normalize": lab.normalize, "batch_size": 64, "piece": piece}
    return [predict(model, b.train, s.retain, **kw), predict(model, b.test, s.test_eval, **kw)]


def test_forward_pieces_give_the_whole_batch_outputs(digits_lab, digits_original):
    whole, pieces = _outputs(digits_original, digits_lab), _outputs(digits_original, digits_lab, piece=7)
    for a, b in zip(whole, pieces, strict=True):
        assert len(a.probs) == len(b.probs) > 64  # several batches, each cut into pieces with a tail
        assert torch.equal(a.correct, b.correct)
        torch.testing.assert_close(b.probs, a.probs, rtol=1e-5, atol=1e-6)
    x = torch.randn(10, 4)
    calls = []
    net = nn.Linear(4, 3)
    net.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    assert forward_in_pieces(net, x, 4).shape == (10, 3)
    assert calls == [4, 4, 2]


def test_eval_copy_folds_bn_without_touching_the_model(digits_lab, digits_original):
    model = copy.deepcopy(digits_original)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = eval_copy(model, digits_lab)
    assert net is not model
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    own_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert own_conv.weight.is_contiguous() and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for a, b in zip(_outputs(model, digits_lab), _outputs(net, digits_lab), strict=True):
        torch.testing.assert_close(b.probs, a.probs, rtol=1e-4, atol=1e-5)


def test_eval_copy_copies_a_model_without_bn_only_for_its_layout(digits_lab):
    plain = create_model("small_cnn_nobn", 10, 3, 8)
    net = eval_copy(plain, digits_lab)
    assert net is not plain and plain.features[3].weight.is_contiguous()
    assert net.features[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert eval_copy(net, digits_lab) is net  # already in the evaluation layout: no second copy
    mlp = nn.Sequential(nn.Linear(4, 2))
    assert eval_copy(mlp, digits_lab) is mlp


def test_attacks_on_threads_equal_fits_one_after_another(digits_lab, digits_original):
    retain, test = _outputs(digits_original, digits_lab)
    s, b = digits_lab.splits, digits_lab.bundle
    forget = predict(digits_original, b.train, s.forget, digits_lab.normalize)
    jobs = [("confidence", 0), ("confidence", 1_000_003), ("entropy", 0), ("m_entropy", 0)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        done = attacks(retain, test, forget, jobs, cap=200)
    finally:
        torch.set_num_threads(threads)
    assert len(done) == len(jobs) and all(seconds > 0 for _, seconds in done)
    for (name, seed), (verdicts, _) in zip(jobs, done, strict=True):
        assert torch.equal(verdicts, attack_verdicts(retain, test, forget, name, 200, seed)), (name, seed)
    assert not torch.equal(done[0][0], done[2][0])  # the jobs differ, so order is checked


def test_cpu_forward_batch_is_checked_and_used_on_cpu_only(digits_lab):
    with pytest.raises(ConfigError, match=r"accel.cpu_forward_batch: got -1; allowed"):
        AccelConfig(cpu_forward_batch=-1).validate()
    assert digits_lab.device.type == "cpu"
    assert digits_lab.forward_piece == digits_lab.cfg.accel.cpu_forward_batch == 128


def test_bench_times_whole_batches_against_pieces_on_equal_outputs(digits_lab, digits_original):
    from mcu_dist.bench_pipeline import piece_rows
    from mcu_dist.evaluate.bn import bn_set_positions
    from mcu_dist.path.bezier import curve_between

    names = [n for n, _ in digits_original.named_parameters()]
    curve = curve_between(digits_original, copy.deepcopy(digits_original), 2, names)
    calib = bn_set_positions(digits_lab, digits_lab.cfg.eval, 0)
    rows: list[dict] = []
    piece_rows(digits_lab, curve, [0.0, 0.5, 1.0], calib, rows)
    assert [r["stage"] for r in rows] == [
        "D_test pass of 3 models, whole batches",
        "D_test pass of 3 models, pieces of 128",
    ]
    assert rows[1]["speedup"] > 0 and rows[1]["max_metric_gap"] == 0.0
    assert digits_lab.cfg.accel.cpu_forward_batch == 128  # restored after the whole-batch timing


class _SharedConv(nn.Module):
    """One convolution called twice, each call followed by its own BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv(x)))
        x = torch.relu(self.bn2(self.conv(x)))
        return self.head(x.mean((2, 3)))


def test_a_shared_convolution_is_not_folded_into_one_of_its_batchnorms(digits_lab):
    torch.manual_seed(0)
    model = _SharedConv()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(eval_copy(model, digits_lab)(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_forward_pieces_leave_batch_statistics_models_whole():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    x = torch.randn(9, 3, 6, 6)
    with torch.no_grad():  # pieces of 4 would normalise each piece by its own statistics
        assert torch.equal(forward_in_pieces(model, x, 4), model(x))
