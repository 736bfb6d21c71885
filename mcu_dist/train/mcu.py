"""Curve training: min over the control points of E_{t~U(0,1)} [ CE(D_r'; θ(t)) − β·CE(D_f; θ(t)) ].

D_r' is a seeded fraction ρ of D_r, drawn once per run and mixed with all of D_f into one
shuffled stream; each sample carries a forget flag. One t per mini-batch from a step-seeded
generator (the same t on every data-parallel rank). L_r and L_f are the mean CE over the *global*
batch's retain and forget samples; a side with no samples contributes 0. β comes from the
schedule, fed with the global batch's accuracies. This one function is the body of the
in-process run and of every Ray Train worker: ``comm`` is the only thing that differs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from mcu_dist.config import MCUConfig
from mcu_dist.guard import check_finite_tensors, check_loss
from mcu_dist.lab import Lab
from mcu_dist.path.beta import BETA_SCHEDULES, DEVICE_RULES, CalTargets
from mcu_dist.path.bezier import BezierCurve


class LocalComm:
    """Single-process stand-in for a process group."""

    rank = 0
    world_size = 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


class TorchDistComm:
    """``torch.distributed`` process group (gloo or NCCL), as Ray Train sets it up."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        self._dist.all_reduce(tensor, op=self._dist.ReduceOp.SUM)
        return tensor


def retain_sample(retain: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """D_r': a seeded fraction of D_r, drawn once per run."""
    count = max(1, int(round(fraction * len(retain))))
    return retain[torch.randperm(len(retain), generator=torch.Generator().manual_seed(seed))[:count]]


def retain_prime_record(lab: Lab) -> dict[str, str]:
    """D_r′ as the manifest records it: seed, fraction, size and SHA-256 of its dataset indices."""
    from mcu_dist.data.forget import manifest_hash

    m, seed = lab.cfg.mcu, lab.cfg.seeds.unlearn
    positions = retain_sample(lab.splits.retain, m.retain_fraction, seed)
    return {
        "retain_prime_seed": str(seed),
        "retain_prime_fraction": str(m.retain_fraction),
        "retain_prime_size": str(len(positions)),
        "retain_prime_sha256": manifest_hash(lab.bundle.dataset_id, lab.bundle.train.index[positions]),
    }


def step_t(seed: int, step: int) -> float:
    """t ~ U(0, 1) for global step ``step``: a pure function of (seed, step), so every rank agrees."""
    return float(torch.rand(1, generator=torch.Generator().manual_seed(seed * 1_000_033 + step)).item())


@dataclass
class CurveState:
    """What a checkpoint holds, and what a resumed run continues from."""

    epoch: int = 0  # epochs completed
    steps: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    attempts: list[int] = field(default_factory=list)  # start epoch of each (re)start, distributed runs


READBACK = 20  # steps between read-backs of a deferred step log


def accuracies(values: list[float], cal: CalTargets) -> tuple[float, float]:
    """(acc_f, acc_r) of a global batch from its summed (n_f, n_r, c_f, c_r, ...)."""
    n_f, n_r, c_f, c_r = values[:4]
    return (100.0 * c_f / n_f if n_f else math.nan), (100.0 * c_r / n_r if n_r else cal.cal_r)


def checked_record(
    step: int,
    epoch: int,
    t: float,
    values: list[float],
    cal: CalTargets,
    max_loss: float,
    rule,
    cfg,
    beta=None,
) -> dict:
    """One step's log entry from its summed statistics, after the loss guard; β from ``rule`` unless given."""
    n_f, n_r, _, _, s_f, s_r = values
    loss_r, loss_f = s_r / max(n_r, 1.0), s_f / max(n_f, 1.0)
    check_loss(loss_r, max_loss, epoch=epoch, step=step, what="L_r", where="curve training")
    check_loss(loss_f, max_loss, epoch=epoch, step=step, what="L_f", where="curve training")
    acc_f, acc_r = accuracies(values, cal)
    if beta is None:
        beta = rule(acc_f, acc_r, cal, cfg) if n_f else 0.0
    return {
        "step": step,
        "epoch": epoch,
        "t": t,
        "beta": beta,
        "loss_r": loss_r,
        "loss_f": loss_f,
        "acc_r": acc_r,
        "acc_f": acc_f,
        "n_r": int(n_r),
        "n_f": int(n_f),
    }


def read_back(pending: list, epoch: int, cal: CalTargets, max_loss: float) -> list[dict]:
    """The deferred steps' log entries (one device read for all of them); empties ``pending``.

    A step's β is a float, or a 0-dim device tensor when a device rule computed it."""
    if not pending:
        return []
    values = torch.stack([p[3] for p in pending]).tolist()
    on_device = [i for i, p in enumerate(pending) if isinstance(p[2], torch.Tensor)]
    betas = [p[2] for p in pending]
    if on_device:
        for i, b in zip(on_device, torch.stack([betas[i] for i in on_device]).tolist(), strict=True):
            betas[i] = b
    out = [
        checked_record(p[0], epoch, p[1], v, cal, max_loss, None, None, beta=beta)
        for p, v, beta in zip(pending, values, betas, strict=True)
    ]
    pending.clear()
    return out


def make_optimizer(curve: BezierCurve, cfg: MCUConfig) -> torch.optim.SGD:
    return torch.optim.SGD(curve.trainable(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_curve(
    curve: BezierCurve,
    lab: Lab,
    cfg: MCUConfig,
    schedule: str,
    targets: CalTargets,
    seed: int,
    *,
    comm=None,
    optimizer: torch.optim.Optimizer | None = None,
    state: CurveState | None = None,
    per_rank_t: bool = False,
    on_epoch_end: Callable[[CurveState, torch.optim.Optimizer], None] | None = None,
    defer_log: bool = True,
) -> CurveState:
    """``defer_log`` False: every step's statistics are read back before its update (the loss guard
    acts at once), as they always are with several workers or the smooth β rule."""
    comm = comm or LocalComm()
    state = state or CurveState()
    optimizer = optimizer or make_optimizer(curve, cfg)
    rule = BETA_SCHEDULES[schedule]
    host_flags = torch.zeros(len(lab.bundle.train), dtype=torch.bool)
    host_flags[lab.splits.forget] = True
    flags = host_flags.to(lab.device)  # indexed on the device each step: no host copy
    # with one process and a β rule that runs on the device (fixed, adaptive_step, adaptive_abs) nothing
    # waits for the device inside a step; the step log (and the loss guard) is read back every
    # READBACK steps
    device_rule = DEVICE_RULES.get(schedule)
    deferred = defer_log and comm.world_size == 1 and device_rule is not None
    stream = torch.cat([lab.splits.forget, retain_sample(lab.splits.retain, cfg.retain_fraction, seed)])
    trainable = curve.trainable()
    max_loss = lab.cfg.max_loss
    curve.base.train()
    step = len(state.steps)
    for epoch in range(state.epoch, cfg.epochs):
        start = time.perf_counter()
        pending: list[tuple[int, float, float, torch.Tensor]] = []
        for batch in lab.batches(
            stream, cfg.batch_size, seed=seed, epoch=epoch, rank=comm.rank, world_size=comm.world_size
        ):
            t = step_t(seed + (comm.rank * 7_777 if per_rank_t else 0), step)
            is_f = flags[batch.device_positions()]
            with lab.autocast():  # bf16 on CUDA when accel.bf16; nothing on CPU
                logits = curve(batch.x, t)
            ce = nn.functional.cross_entropy(logits.float(), batch.y, reduction="none")
            correct = logits.argmax(1) == batch.y
            f, r = is_f.float(), (~is_f).float()
            local = torch.stack(
                [
                    f.sum(),
                    r.sum(),
                    (correct * f).sum(),
                    (correct * r).sum(),
                    (ce * f).sum().detach(),
                    (ce * r).sum().detach(),
                ]
            ).double()
            if deferred:
                n_f = float(host_flags[batch.positions].sum())  # a host tensor: no device sync
                n_r = len(batch.positions) - n_f
                beta = device_rule(local, targets, cfg) if n_f else 0.0
                pending.append((step, t, beta, local))
            else:
                values = comm.all_reduce_sum(local).tolist()
                # every rank sees the same all-reduced sums, so every rank stops at the same step
                state.steps.append(checked_record(step, epoch, t, values, targets, max_loss, rule, cfg))
                n_f, n_r, beta = values[0], values[1], state.steps[-1]["beta"]
            loss_r = (ce * r).sum() / max(n_r, 1.0)
            loss_f = (ce * f).sum() / max(n_f, 1.0)
            optimizer.zero_grad(set_to_none=True)
            if isinstance(beta, torch.Tensor):  # as a float would be: cast to the loss's dtype
                beta = beta.to(loss_f.dtype)
            (loss_r - beta * loss_f).backward()
            if comm.world_size > 1:
                for p in trainable:
                    comm.all_reduce_sum(p.grad)
            optimizer.step()
            step += 1
            if len(pending) >= READBACK:
                state.steps += read_back(pending, epoch, targets, max_loss)
        state.steps += read_back(pending, epoch, targets, max_loss)
        state.epoch = epoch + 1
        state.seconds += time.perf_counter() - start
        if on_epoch_end is not None:
            on_epoch_end(state, optimizer)
    curve.base.eval()
    check_finite_tensors(dict(curve.named_parameters()), "curve training")
    return state


def calibration_targets(original: nn.Module, lab: Lab, classwise: bool, batch_size: int = 512) -> CalTargets:
    """Cal_r: θ_o's accuracy on its training data; Cal_f: θ_o's test accuracy (0 when class-wise)."""
    from mcu_dist.evaluate.metrics import predict

    kw = {"batch_size": batch_size, "device": lab.device, "piece": lab.forward_piece}
    cal_r = predict(original, lab.bundle.train, lab.all_train, lab.normalize, **kw).accuracy
    cal_f = (
        0.0
        if classwise
        else predict(original, lab.bundle.test, lab.splits.test_eval, lab.normalize, **kw).accuracy
    )
    return CalTargets(cal_f=cal_f, cal_r=cal_r)
