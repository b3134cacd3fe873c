"""Stage 2: anchors through the object's volume, k-nearest springs and the binding of every
Gaussian to its nearest anchors (paper Eq. 4-6, 15)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.anchors import Anchors
from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import Gaussians
from pipeline.data.points import read_points
from pipeline.fit.geometry import farthest_point_sampling, opaque_centres, sample_anchors
from taichi_sim.binding import compute_binding
from taichi_sim.errors import SgausError
from taichi_sim.spring_model import nearest_springs


@dataclass(frozen=True)
class AnchorSettings:
    """n_anchors: anchors N_A; k_neighbors: springs per anchor (n_k, Eq. 5); n_b, p_b: anchors per
    Gaussian and the inverse-distance power of the binding (Eq. 15); seed; splat_hull: carve the
    masks' visual hull with the Gaussians' own silhouettes from all around, below included
    (pipeline.fit.geometry.inside_splat_hull); layout: "fps" (scattered points thinned by
    farthest-point sampling) or "lattice" (layers parallel to the ground,
    pipeline.fit.geometry.lattice_anchors); points: a file of points that replaces the hull (the
    anchors are thinned from them by farthest-point sampling; pipeline.data.points.read_points),
    points_sha256 its content's digest, so a changed file changes the stage's key."""

    n_anchors: int = 512
    k_neighbors: int = 64
    n_b: int = 8
    p_b: float = 0.5
    seed: int = 0
    splat_hull: bool = False
    layout: str = "fps"
    points: str = ""
    points_sha256: str = ""


def run(g: Gaussians, frames: FrameCache, settings: AnchorSettings, up=(0.0, 1.0, 0.0)) -> Anchors:
    """``up``: the ground's normal (the lattice layout's layers lie parallel to the ground)."""
    if settings.points:
        anchors = anchors_from_points(read_points(settings.points), g, settings.n_anchors, settings.seed,
                                      settings.points)
    else:
        anchors = sample_anchors(g, frames, settings.n_anchors, settings.seed, splat_hull=settings.splat_hull,
                                 layout=settings.layout, up=up)
    neighbors, rest_length = nearest_springs(anchors, settings.k_neighbors)
    binding = compute_binding(g.means.detach(), anchors, settings.n_b, settings.p_b)
    return Anchors(anchors, neighbors, rest_length, binding)


def anchors_from_points(points, g: Gaussians, n_anchors: int, seed: int, name: str = "points"):
    """``n_anchors`` of the user's ``points`` [N,3], thinned by farthest-point sampling. They must
    cover the reconstructed object: at least half of its opaque Gaussians' centres inside their
    bounding box, grown by a tenth of its diagonal (points in another frame or unit are named, not
    bound to Gaussians far away)."""
    if len(points) < n_anchors:
        raise SgausError(f"{name}: {len(points)} points, fewer than the {n_anchors} anchors asked for (n_anchors)")
    centres = opaque_centres(g)
    lo, hi = points.min(0).values, points.max(0).values
    pad = 0.1 * float((hi - lo).norm())
    covered = ((centres >= lo - pad) & (centres <= hi + pad)).all(1).float().mean()
    if covered < 0.5:
        raise SgausError(f"{name}: the points do not cover the reconstructed object ({100 * float(covered):.0f} % "
                         f"of its Gaussians inside their bounds); they must be in the coordinates of the "
                         f"anchors (frame 0's scene; for a capture, the static photos' frame)")
    return points[farthest_point_sampling(points, n_anchors, seed)].contiguous()
