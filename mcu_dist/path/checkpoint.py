"""Curve checkpoints that name the endpoints they were trained between.

A control point means nothing without its endpoints: θ(t) = Σ_j B_j(t) θ_j mixes it with θ_o and θ_p.
A curve checkpoint (``curve.pt`` of a run, each Ray Train curve-training checkpoint) therefore
carries in its header the SHA-256 of each endpoint's parameters (``mcu_dist.store.digest_of``) and
the curve's order, and loading it into a curve with other endpoints or another order is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcu_dist.config import ConfigError
from mcu_dist.path.bezier import BezierCurve
from mcu_dist.store import digest_of, load_checkpoint, save_checkpoint


def endpoint_digests(curve: BezierCurve) -> dict[str, str]:
    """``{"original": sha256(θ_o), "endpoint": sha256(θ_p)}`` of the curve's frozen end points."""
    ends = {"original": 0, "endpoint": curve.order}
    return {k: digest_of({n: curve.point(j, n) for n in curve.names}) for k, j in ends.items()}


def curve_meta(curve: BezierCurve) -> dict[str, Any]:
    """What a curve checkpoint's header records beside the control points."""
    return {"order": curve.order, "selected": sorted(curve.selected), "endpoints": endpoint_digests(curve)}


def check_endpoints(curve: BezierCurve, header: dict[str, Any], source: str) -> None:
    """Refuse control points trained between other endpoints (or of another order) than ``curve``'s."""
    saved, here = header.get("endpoints"), endpoint_digests(curve)
    if saved != here or header.get("order") != curve.order:
        got = {k: v[:12] for k, v in (saved or {}).items()} or "no endpoint digests"
        raise ConfigError(
            f"curve checkpoint {source}: trained between endpoints {got} (order {header.get('order')}); "
            f"allowed: a checkpoint of this curve's endpoints { ({k: v[:12] for k, v in here.items()}) } "
            f"(order {curve.order})"
        )


def save_curve(curve: BezierCurve, path: str | Path) -> None:
    save_checkpoint(path, "curve", curve.control_state(), curve_meta(curve))


def load_curve(curve: BezierCurve, path: str | Path) -> BezierCurve:
    """Load ``curve.pt`` into ``curve`` (built between the same θ_o and θ_p); refused otherwise."""
    ckpt = load_checkpoint(path, "curve checkpoint", kind="curve")
    check_endpoints(curve, ckpt.header, str(path))
    curve.load_control_state(ckpt.state)
    return curve
