"""Stage 2: anchors through the object's volume, k-nearest springs and the binding of every
Gaussian to its nearest anchors (paper Eq. 4-6, 15)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.anchors import Anchors
from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import Gaussians
from pipeline.fit.geometry import sample_anchors
from taichi_sim.binding import compute_binding
from taichi_sim.spring_model import nearest_springs


@dataclass(frozen=True)
class AnchorSettings:
    """n_anchors: anchors N_A; k_neighbors: springs per anchor (n_k, Eq. 5); n_b, p_b: anchors per
    Gaussian and the inverse-distance power of the binding (Eq. 15); seed; splat_hull: carve the
    masks' visual hull with the Gaussians' own silhouettes from all around, below included
    (pipeline.fit.geometry.inside_splat_hull); layout: "fps" (scattered points thinned by
    farthest-point sampling) or "lattice" (layers parallel to the ground,
    pipeline.fit.geometry.lattice_anchors)."""

    n_anchors: int = 512
    k_neighbors: int = 64
    n_b: int = 8
    p_b: float = 0.5
    seed: int = 0
    splat_hull: bool = False
    layout: str = "fps"


def run(g: Gaussians, frames: FrameCache, settings: AnchorSettings, up=(0.0, 1.0, 0.0)) -> Anchors:
    """``up``: the ground's normal (the lattice layout's layers lie parallel to the ground)."""
    anchors = sample_anchors(g, frames, settings.n_anchors, settings.seed, splat_hull=settings.splat_hull,
                             layout=settings.layout, up=up)
    neighbors, rest_length = nearest_springs(anchors, settings.k_neighbors)
    binding = compute_binding(g.means.detach(), anchors, settings.n_b, settings.p_b)
    return Anchors(anchors, neighbors, rest_length, binding)
