"""Stage 2: anchors through the object's volume, k-nearest springs and the binding of every
Gaussian to its nearest anchors (paper Eq. 4-6, 15)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.files import atomic_file
from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import Gaussians
from pipeline.data.schema import load_npz
from pipeline.fit.geometry import sample_anchors
from taichi_sim.binding import Binding, compute_binding
from taichi_sim.errors import SgausError
from taichi_sim.spring_model import nearest_springs


@dataclass(frozen=True)
class AnchorSettings:
    """n_anchors: anchors N_A; k_neighbors: springs per anchor (n_k, Eq. 5); n_b, p_b: anchors per
    Gaussian and the inverse-distance power of the binding (Eq. 15); seed."""

    n_anchors: int = 512
    k_neighbors: int = 64
    n_b: int = 8
    p_b: float = 0.5
    seed: int = 0


@dataclass
class Anchors:
    """rest_positions [N,3]; neighbors [N,K] int64 nearest first; rest_length [N,K]; binding."""

    rest_positions: torch.Tensor
    neighbors: torch.Tensor
    rest_length: torch.Tensor
    binding: Binding


def run(g: Gaussians, frames: FrameCache, settings: AnchorSettings) -> Anchors:
    anchors = sample_anchors(g, frames, settings.n_anchors, settings.seed)
    neighbors, rest_length = nearest_springs(anchors, settings.k_neighbors)
    binding = compute_binding(g.means.detach(), anchors, settings.n_b, settings.p_b)
    return Anchors(anchors, neighbors, rest_length, binding)


def save(anchors: Anchors, path: Path) -> None:
    """anchors.npz: rest_positions, neighbors, rest_length, binding_index, binding_weight."""
    with atomic_file(path, suffix=".npz") as f:
        np.savez(f, rest_positions=anchors.rest_positions.detach().cpu().numpy(),
                 neighbors=anchors.neighbors.detach().cpu().numpy(),
                 rest_length=anchors.rest_length.detach().cpu().numpy(),
                 binding_index=anchors.binding.index.detach().cpu().numpy(),
                 binding_weight=anchors.binding.weight.detach().cpu().numpy())


def load(path: Path, n_gaussians: int | None = None) -> Anchors:
    """anchors.npz, checked: shapes agree, indices in range, every value finite, rest lengths and
    binding weights positive."""
    a = load_npz(path, {"rest_positions": (2, "f"), "neighbors": (2, "i"), "rest_length": (2, "f"),
                        "binding_index": (2, "i"), "binding_weight": (2, "f")})
    rest, nbr, length = a["rest_positions"], a["neighbors"], a["rest_length"]
    bi, bw = a["binding_index"], a["binding_weight"]
    n = len(rest)
    if rest.shape[1:] != (3,) or n < 2:
        raise SgausError(f"{path}: 'rest_positions' must be [N,3] with N >= 2, got shape {rest.shape}")
    if nbr.shape[0] != n or length.shape != nbr.shape:
        raise SgausError(f"{path}: 'neighbors' {nbr.shape} and 'rest_length' {length.shape} must be [N={n},K]")
    if nbr.min() < 0 or nbr.max() >= n:
        raise SgausError(f"{path}: 'neighbors' holds an index outside 0..{n - 1}")
    if not (length > 0).all():
        raise SgausError(f"{path}: 'rest_length' must be positive")
    if bw.shape != bi.shape or (n_gaussians is not None and bi.shape[0] != n_gaussians):
        raise SgausError(f"{path}: 'binding_index' {bi.shape} and 'binding_weight' {bw.shape} must be "
                         f"[G{'' if n_gaussians is None else '=' + str(n_gaussians)},n_b]")
    if bi.size and (bi.min() < 0 or bi.max() >= n):
        raise SgausError(f"{path}: 'binding_index' holds an index outside 0..{n - 1}")
    if (bw < 0).any() or not np.allclose(bw.sum(1), 1.0, atol=1e-3):
        raise SgausError(f"{path}: 'binding_weight' rows must be non-negative and sum to 1")
    return Anchors(torch.from_numpy(rest), torch.from_numpy(nbr).long(), torch.from_numpy(length),
                   Binding(torch.from_numpy(bi).long(), torch.from_numpy(bw)))
