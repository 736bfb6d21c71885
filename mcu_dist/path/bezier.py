"""Bézier curves in weight space over an unmodified nn.Module.

    θ(t) = Σ_j C(n, j) tʲ (1−t)ⁿ⁻ʲ θ_j,   θ_0 = θ_o (t = 0),  θ_n = θ_p (t = 1)

Degree 2 is the paper's quadratic curve (1−t)²θ_o + 2t(1−t)θ_c + t²θ_p. The endpoints are frozen
buffers; the interior points start evenly on the straight line (point j at j/n), so the initial
curve *is* the line. Only interior tensors the mask selects are ``nn.Parameter``s; the others are
buffers that nothing can move. The network is run on θ(t) by putting θ(t)'s tensors in the base's
parameter slots for the call (what ``torch.func.functional_call`` does), so autograd gives
∂L/∂θ_j = B_j(t)·∂L/∂w at w = θ(t) exactly, for any architecture.

BatchNorm running statistics do not lie on the curve: there is one set, the base model's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from mcu_dist.config import ConfigError


@dataclass
class _PointLists:
    moving: list[int]  # positions in ``names`` of the selected tensors
    frozen: list[int]
    moving_points: list[list[torch.Tensor]]  # [j][k]: control point j's k-th selected tensor
    frozen_points: list[list[torch.Tensor]]
    first: list[torch.Tensor]  # [j]: control point j's first tensor, to notice a replacement


def _weighted_sum(coeffs: list[float], points: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Σ_j coeffs[j]·points[j] tensor by tensor, in the order j = 0..n, one foreach kernel per point."""
    ws = torch._foreach_mul(points[0], coeffs[0])
    for j in range(1, len(points)):
        ws = torch._foreach_add(ws, points[j], alpha=coeffs[j])
    return ws


def bernstein(n: int, t: float | torch.Tensor) -> list:
    return [math.comb(n, j) * t**j * (1 - t) ** (n - j) for j in range(n + 1)]


def _slot(name: str) -> str:
    return name.replace(".", "__")


class BezierCurve(nn.Module):
    def __init__(
        self,
        base: nn.Module,
        start: dict[str, torch.Tensor],
        end: dict[str, torch.Tensor],
        order: int = 2,
        selected: set[str] | None = None,
    ):
        super().__init__()
        if order < 2:
            raise ConfigError(f"mcu.curve_order: got {order!r}; allowed: an integer >= 2")
        names = [n for n, _ in base.named_parameters()]
        for which, d in (("start", start), ("end", end)):
            missing = [n for n in names if n not in d]
            wrong = [n for n in names if n in d and d[n].shape != dict(base.named_parameters())[n].shape]
            if missing or wrong:
                raise ConfigError(
                    f"endpoints: the {which} model is not of the base architecture "
                    f"({(missing or wrong)[0]} {'missing' if missing else 'has another shape'}); "
                    "allowed: two checkpoints of one architecture"
                )
        self.base = base
        self.order = order
        self.names = names
        self.selected = set(names) if selected is None else set(selected)
        self.points = nn.ModuleList()
        for j in range(order + 1):
            holder = nn.Module()
            for n in names:
                a, b = start[n].detach(), end[n].detach()
                value = (a + (b - a) * (j / order)).clone() if 0 < j < order else (a if j == 0 else b).clone()
                if 0 < j < order and n in self.selected:
                    holder.register_parameter(_slot(n), nn.Parameter(value))
                else:
                    holder.register_buffer(_slot(n), value)
            self.points.append(holder)
        for p in self.base.parameters():
            p.requires_grad_(False)
        self._point_lists: _PointLists | None = None
        self._param_slots: list[tuple[nn.Module, str, str]] | None = None

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def point(self, j: int, name: str) -> torch.Tensor:
        return getattr(self.points[j], _slot(name))

    def weights_at(self, t: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """θ(t) for every parameter tensor (differentiable in the selected control-point tensors)."""
        coeffs = bernstein(self.order, t)
        if isinstance(t, torch.Tensor):
            out = {}
            for n in self.names:
                w = coeffs[0] * self.point(0, n)
                for j in range(1, self.order + 1):
                    w = w + coeffs[j] * self.point(j, n)
                out[n] = w
            return out
        # multi-tensor (foreach) kernels, one per control point and tensor group instead of two per tensor
        # per point: on a GPU the curve step would otherwise be bound by kernel launches. The tensors
        # no gradient reaches (frozen by the mask) are summed outside autograd, so a masked step
        # records and back-propagates through the selected tensors only. The sum runs in the same
        # order (j = 0..n) for every tensor, so θ(t) is bitwise what one foreach chain gives.
        lists = self._lists()
        ws: list[torch.Tensor | None] = [None] * len(self.names)
        with torch.no_grad():
            frozen = _weighted_sum(coeffs, lists.frozen_points) if lists.frozen else []
        moving = _weighted_sum(coeffs, lists.moving_points) if lists.moving else []
        for i, w in [*zip(lists.frozen, frozen, strict=True), *zip(lists.moving, moving, strict=True)]:
            ws[i] = w
        return dict(zip(self.names, ws, strict=True))

    def _lists(self) -> _PointLists:
        """The control points' tensors as lists, split into moving (selected) and frozen; built once and
        rebuilt when the tensors are replaced (``.to()`` through ``_apply``; ``load_state_dict(assign=True)``
        or a child's ``.to()``, seen by the first tensor of each point)."""
        lists = self._point_lists
        if lists is None or any(  # a point's tensors replaced under the curve (e.g. a child's .to())
            lists.first[j] is not getattr(self.points[j], _slot(self.names[0])) for j in range(self.order + 1)
        ):
            moving = [i for i, n in enumerate(self.names) if n in self.selected]
            frozen = [i for i, n in enumerate(self.names) if n not in self.selected]
            points = [self._points(j) for j in range(self.order + 1)]
            self._point_lists = _PointLists(
                moving,
                frozen,
                [[p[i] for i in moving] for p in points],
                [[p[i] for i in frozen] for p in points],
                [p[0] for p in points],
            )
        return self._point_lists

    def _points(self, j: int) -> list[torch.Tensor]:
        return [getattr(self.points[j], _slot(n)) for n in self.names]

    # the caches hold tensors and modules: anything that may replace them drops the caches
    def _drop_caches(self) -> None:
        self.__dict__["_point_lists"] = self.__dict__["_param_slots"] = None

    def _apply(self, fn, *args, **kwargs):
        self._drop_caches()
        return super()._apply(fn, *args, **kwargs)

    def __setattr__(self, name, value):  # e.g. ``curve.base = convert_sync_batchnorm(curve.base)``
        if name in ("base", "points"):
            self._drop_caches()
        super().__setattr__(name, value)

    def forward(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The base network run on θ(t): each parameter slot of the base holds θ(t)'s tensor for the
        call and its own parameter again afterwards (as ``torch.func.functional_call`` does, without
        its per-call bookkeeping: 0.4 ms a step on a 65-tensor network, measured by ``bench``'s
        host_step row). A tensor shared by several modules fills every slot it occupies."""
        weights = self.weights_at(t)
        slots = self._slots()
        saved = [(module, leaf, module._parameters[leaf]) for module, leaf, _ in slots]
        try:
            for module, leaf, name in slots:
                module._parameters[leaf] = weights[name]
            return self.base(x)
        finally:
            for module, leaf, param in saved:
                module._parameters[leaf] = param

    def _slots(self) -> list[tuple[nn.Module, str, str]]:
        """(module, attribute, parameter name) of every parameter slot of the base, built once."""
        if self._param_slots is None:
            first_name = {id(p): n for n, p in self.base.named_parameters()}
            slots, seen = [], set()
            for module in self.base.modules():
                for leaf, p in module._parameters.items():
                    if p is not None and id(p) in first_name and (id(module), leaf) not in seen:
                        seen.add((id(module), leaf))
                        slots.append((module, leaf, first_name[id(p)]))
            self._param_slots = slots
        return self._param_slots

    @torch.no_grad()
    def materialize(self, t: float, buffers: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """A plain model of the base architecture with weights θ(t) (and the given or current buffers)."""
        model = copy.deepcopy(self.base)
        weights = self.weights_at(float(t))
        for n, p in model.named_parameters():
            p.copy_(weights[n])
            p.requires_grad_(True)
        if buffers is not None:
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        return model.eval()

    def control_state(self) -> dict[str, torch.Tensor]:
        """Interior points only (what training changes), keyed ``point{j}.{name}``."""
        return {
            f"point{j}.{n}": self.point(j, n).detach().clone()
            for j in range(1, self.order)
            for n in self.names
        }

    @torch.no_grad()
    def load_control_state(self, state: dict[str, torch.Tensor]) -> None:
        for j in range(1, self.order):
            for n in self.names:
                self.point(j, n).copy_(state[f"point{j}.{n}"])


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def curve_between(original: nn.Module, endpoint: nn.Module, order: int, selected: list[str]) -> BezierCurve:
    """The curve θ_o -> θ_p over a copy of θ_o (whose BN buffers it carries), ``selected`` trainable."""
    return BezierCurve(
        copy.deepcopy(original), params_of(original), params_of(endpoint), order, set(selected)
    )
