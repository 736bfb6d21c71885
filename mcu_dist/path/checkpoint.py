"""Curve checkpoints that name the endpoints they were trained between.

A control point means nothing without its endpoints: θ(t) = Σ_j B_j(t) θ_j mixes it with θ_o and θ_p.
A checkpoint (``curve.pt`` of a run, each Ray Train epoch checkpoint) therefore carries a SHA-256 of
each endpoint's parameters, and loading it into a curve with other endpoints is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from mcu_dist.config import ConfigError
from mcu_dist.path.bezier import BezierCurve


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes, dtypes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def endpoint_digests(curve: BezierCurve) -> dict[str, str]:
    """``{"original": sha256(θ_o), "endpoint": sha256(θ_p)}`` of the curve's frozen end points."""
    ends = {"original": 0, "endpoint": curve.order}
    return {k: tensors_digest({n: curve.point(j, n) for n in curve.names}) for k, j in ends.items()}


def curve_payload(curve: BezierCurve) -> dict:
    return {
        "control_state": curve.control_state(),
        "order": curve.order,
        "selected": sorted(curve.selected),
        "endpoints": endpoint_digests(curve),
    }


def check_endpoints(curve: BezierCurve, payload: dict, source: str) -> None:
    """Refuse control points trained between other endpoints (or of another order) than ``curve``'s."""
    saved = payload.get("endpoints")
    here = endpoint_digests(curve)
    if saved != here or payload.get("order", curve.order) != curve.order:
        got = {k: v[:12] for k, v in (saved or {}).items()} or "no endpoint digests"
        raise ConfigError(
            f"curve checkpoint {source}: trained between endpoints {got} (order {payload.get('order')}); "
            f"allowed: a checkpoint of this curve's endpoints { ({k: v[:12] for k, v in here.items()}) } "
            f"(order {curve.order})"
        )


def load_curve(curve: BezierCurve, path: str | Path) -> BezierCurve:
    """Load ``curve.pt`` into ``curve`` (built between the same θ_o and θ_p); refused otherwise."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    check_endpoints(curve, payload, str(path))
    curve.load_control_state(payload["control_state"])
    return curve
