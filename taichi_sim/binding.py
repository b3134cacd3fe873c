"""Gaussians bound to anchors by inverse-distance weighting (paper Eq. 6 and 15).

Each Gaussian centre follows its ``n_b`` nearest anchors with weights proportional to
d^-p_b, the distances measured once at t = 0 and then kept fixed; a Gaussian that sits exactly
on anchors follows those anchors alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from taichi_sim.errors import SgausError


@dataclass
class Binding:
    """index [G, n_b] int64 nearest anchors of each Gaussian; weight [G, n_b], rows sum to 1."""

    index: torch.Tensor
    weight: torch.Tensor


def compute_binding(points: torch.Tensor, anchors: torch.Tensor, n_b: int = 16, p_b: float = 0.5) -> Binding:
    """Bind points [G,3] to their ``n_b`` nearest anchors [N,3] (clipped to N) with weights
    d^-p_b / sum d^-p_b (Eq. 15); a point at distance 0 from anchors is bound to those alone."""
    from scipy.spatial import cKDTree

    for name, t in (("points", points), ("anchors", anchors)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != 3:
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise SgausError(f"{name} must be a [M,3] tensor, got {shape}")
    if anchors.shape[0] == 0:
        raise SgausError("cannot bind to an empty set of anchors")
    if isinstance(n_b, bool) or int(n_b) != n_b or n_b < 1:
        raise SgausError(f"n_b must be a positive integer, got {n_b}")
    if not p_b >= 0:
        raise SgausError(f"p_b must be >= 0, got {p_b}")
    pts = points.detach().cpu().double().numpy()
    anc = anchors.detach().cpu().double().numpy()
    if not (np.isfinite(pts).all() and np.isfinite(anc).all()):
        raise SgausError("points or anchors contain NaN or Inf")
    k = min(int(n_b), anc.shape[0])
    dist, idx = cKDTree(anc).query(pts, k=k)
    dist, idx = dist.reshape(len(pts), k), idx.reshape(len(pts), k)
    on_anchor = dist == 0
    with np.errstate(divide="ignore"):
        w = np.where(on_anchor, 0.0, np.power(np.maximum(dist, 1e-300), -float(p_b)))
    hit = on_anchor.any(1)
    w[hit] = on_anchor[hit].astype(np.float64)  # guard d = 0: follow the coincident anchor(s)
    w /= w.sum(1, keepdims=True)
    dtype = points.dtype if points.is_floating_point() else torch.float32
    return Binding(index=torch.from_numpy(idx).long(), weight=torch.from_numpy(w).to(dtype))


def apply_binding(binding: Binding, anchor_positions: torch.Tensor) -> torch.Tensor:
    """Gaussian centres [..., G, 3] from anchor positions [..., N, 3] (Eq. 15), differentiable."""
    if anchor_positions.dim() < 2 or anchor_positions.shape[-1] != 3:
        raise SgausError(f"anchor positions must be [..., N, 3], got {list(anchor_positions.shape)}")
    n = anchor_positions.shape[-2]
    if binding.index.numel() and int(binding.index.max()) >= n:
        raise SgausError(f"the binding refers to anchor {int(binding.index.max())} but only {n} anchors were given")
    index = binding.index.to(anchor_positions.device)
    weight = binding.weight.to(device=anchor_positions.device, dtype=anchor_positions.dtype)
    gathered = anchor_positions[..., index, :]  # [..., G, n_b, 3]
    return (gathered * weight[..., None]).sum(-2)
