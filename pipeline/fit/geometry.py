"""Geometry the fit stages share: pixel look-ups, the visual hull of the masks, farthest-point
sampling, volume sampling of anchors and the detection of the first ground contact."""
from __future__ import annotations

import math

import torch

from pipeline.data.cameras import Cameras
from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import Gaussians
from taichi_sim.errors import SgausError


def lookup_pixels(images: torch.Tensor, cams: Cameras, points: torch.Tensor):
    """Values of images [C,H,W,K] under the projections of points [P,3] (nearest pixel):
    values [C,P,K] and a mask [C,P] of projections inside the image and in front."""
    uv, z = cams.project(points)
    u, v = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    inside = (z > 1e-6) & (u >= 0) & (u < cams.width) & (v >= 0) & (v < cams.height)
    u, v = u.clamp(0, cams.width - 1), v.clamp(0, cams.height - 1)
    c = torch.arange(len(cams))[:, None].expand_as(u)
    return images[c, v, u], inside


def inside_visual_hull(points: torch.Tensor, alpha: torch.Tensor, cams: Cameras, threshold: float = 0.5,
                       min_view_fraction: float = 1.0) -> torch.Tensor:
    """Boolean mask [P]: points seen by at least ``min_view_fraction`` of the views (rounded up)
    and inside the mask ``alpha`` [C,H,W,1] of every view that sees them. With the default 1.0 a
    point must project inside every mask; a fraction below 1 keeps an object cut by one image
    border."""
    values, inside = lookup_pixels(alpha, cams, points)
    min_views = math.ceil(min_view_fraction * len(cams))
    return torch.all(~inside | (values[..., 0] > threshold), dim=0) & (inside.sum(0) >= min_views)


def farthest_point_sampling(points: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` points chosen by farthest-point sampling (even coverage of the volume)."""
    n = min(n, len(points))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.empty(n, dtype=torch.long)
    idx[0] = torch.randint(len(points), (1,), generator=gen)
    dist = torch.full((len(points),), float("inf"))
    for i in range(1, n):
        dist = torch.minimum(dist, ((points - points[idx[i - 1]]) ** 2).sum(-1))
        idx[i] = torch.argmax(dist)
    return idx


def grid_points(lo: torch.Tensor, hi: torch.Tensor, step: float) -> torch.Tensor:
    axes = [torch.arange(float(lo[i]), float(hi[i]) + 1e-9, float(step)) for i in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def hemisphere_directions(n: int) -> torch.Tensor:
    """[n,3] unit directions spread evenly over a half sphere (a Fibonacci lattice), plus nothing
    else: an orthographic silhouette along d is the same as along -d."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = i / n  # cos(polar angle) evenly in (0, 1]
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = (1 - z**2).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1).float()


def inside_splat_hull(points: torch.Tensor, centres: torch.Tensor, cell: float, n_directions: int = 24,
                      close_cells: int = 2) -> torch.Tensor:
    """Boolean mask [P]: points inside the orthographic silhouette of the Gaussian centres [G,3]
    along every one of ``n_directions`` directions over the whole sphere (from below too).

    The visual hull of the masks is only as tight as its cameras allow: cameras above the ground
    never see the object's underside, so the hull reaches down to whatever bounds it (measured:
    anchors 3 to 4 cm below the true bottom of a torus or a pawn), and the fitted object then lands
    on phantom anchors early and comes to rest too high. The reconstructed surface (the Gaussian
    centres) does bound the underside; its silhouettes along many directions are rasterised on a
    grid of ``cell`` and closed by ``close_cells`` cells (so the gaps between surface Gaussians do
    not carve the inside), and a point is kept only inside all of them."""
    if len(centres) == 0:
        return torch.ones(len(points), dtype=torch.bool)
    import torch.nn.functional as F

    keep = torch.ones(len(points), dtype=torch.bool)
    pad = close_cells + 2
    for d in hemisphere_directions(n_directions):
        helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(d[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
        e1 = torch.linalg.cross(d, helper)
        e1 = e1 / e1.norm()
        e2 = torch.linalg.cross(d, e1)
        basis = torch.stack([e1, e2], 1)  # [3,2]
        c2, p2 = centres.float() @ basis, points.float() @ basis
        origin = c2.min(0).values - pad * cell
        size = ((c2.max(0).values - origin) / cell).long() + pad + 1
        occ = torch.zeros(int(size[0]), int(size[1]))
        idx = ((c2 - origin) / cell).long()
        occ[idx[:, 0], idx[:, 1]] = 1.0
        if close_cells:
            k = 2 * close_cells + 1
            occ = F.max_pool2d(occ[None, None], k, 1, close_cells)  # dilate, then erode: a closing
            occ = -F.max_pool2d(-occ, k, 1, close_cells)
            occ = occ[0, 0]
        ip = ((p2 - origin) / cell).floor().long()
        inside = (ip >= 0).all(1) & (ip[:, 0] < occ.shape[0]) & (ip[:, 1] < occ.shape[1])
        ip = ip.clamp_min(0)
        ip[:, 0] = ip[:, 0].clamp_max(occ.shape[0] - 1)
        ip[:, 1] = ip[:, 1].clamp_max(occ.shape[1] - 1)
        keep &= inside & (occ[ip[:, 0], ip[:, 1]] > 0.5)
    return keep


def opaque_centres(g: Gaussians, min_opacity: float = 0.05) -> torch.Tensor:
    """The centres [M,3] of the Gaussians more opaque than ``min_opacity`` (all of them where none
    is): where the reconstructed object is."""
    keep = g.opacities() > min_opacity
    return (g.means[keep] if keep.any() else g.means).detach()


def sample_anchors(g: Gaussians, frames: FrameCache, n_anchors: int, seed: int = 0, resolution: int = 48,
                   splat_hull: bool = False, layout: str = "fps", up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """N_A anchors through the object's volume (Eq. 4): the inside of the visual hull carved
    from frame 0's masks and (``splat_hull``) by the silhouettes of the Gaussians themselves seen
    from all around (:func:`inside_splat_hull`), restricted to the Gaussians' bounding box.
    ``layout`` "fps": those points (jittered grid) plus the Gaussian centres, thinned by
    farthest-point sampling; "lattice": a cubic lattice with layers parallel to the ground of
    normal ``up`` (:func:`lattice_anchors`)."""
    centres = opaque_centres(g)
    lo, hi = centres.min(0).values, centres.max(0).values
    pad = 0.02 * (hi - lo).max()
    lo, hi = lo - pad, hi + pad
    step = (hi - lo).max() / resolution
    grid = grid_points(lo, hi, step)
    gen = torch.Generator().manual_seed(seed)
    grid = grid + (torch.rand(grid.shape, generator=gen) - 0.5) * step * 0.5
    interior = grid[_inside_object(grid, frames, centres, float(step), splat_hull)]
    if layout == "lattice":
        return lattice_anchors(interior, float(step), n_anchors, up, seed,
                               lambda p: _inside_object(p, frames, centres, float(step), splat_hull))
    if layout != "fps":
        raise SgausError(f"anchor layout must be 'fps' or 'lattice', got {layout!r}")
    candidates = torch.cat([interior, centres], 0)
    if len(candidates) < n_anchors:
        raise SgausError(
            f"only {len(candidates)} candidate anchor points were found inside the object; ask for fewer anchors"
        )
    return candidates[farthest_point_sampling(candidates, n_anchors, seed)].contiguous()


def _inside_object(points: torch.Tensor, frames: FrameCache, centres: torch.Tensor, cell: float,
                   splat_hull: bool) -> torch.Tensor:
    inside = inside_visual_hull(points, frames.alpha(0), frames.cameras)
    if splat_hull:
        inside &= inside_splat_hull(points, centres, cell)
    return inside


def lattice_anchors(interior: torch.Tensor, cell: float, n_anchors: int, up, seed: int, inside) -> torch.Tensor:
    """``n_anchors`` anchors on a cubic lattice whose layers lie parallel to the ground (normal
    ``up``), its lowest layer just inside the object's bottom: a flat object bottom gets a flat
    layer of anchors that meets a flat ground all at once, where anchors thinned from scattered
    points touch down one by one and tip a stiff model over (README: the fit, stage 2). ``interior``: points
    of a fine grid of spacing ``cell`` inside the object, which place the bottom; ``inside(points)``
    says which points lie inside it. The spacing is the largest that still puts ``n_anchors``
    lattice points inside (bisection); farthest-point sampling then drops the few extra, which it
    picks last (points on the outside, the bottom layer among them, come first)."""
    if len(interior) < 1:
        raise SgausError("no point was found inside the object; ask for fewer anchors")
    n = torch.as_tensor(up, dtype=interior.dtype)
    n = n / n.norm()
    helper = torch.tensor([1.0, 0.0, 0.0] if abs(float(n[0])) < 0.9 else [0.0, 0.0, 1.0], dtype=interior.dtype)
    t1 = torch.linalg.cross(n, helper)
    t1 = t1 / t1.norm()
    t2 = torch.linalg.cross(t1, n)
    frame = torch.stack([t1, n, t2])  # rows: the lattice's axes, the second along the normal
    local = interior @ frame.T
    lo, hi = local.min(0).values, local.max(0).values
    lo = lo - cell
    hi = hi + cell
    bottom = float(local[:, 1].min()) + 0.25 * cell  # the first layer a quarter cell above the lowest inside point

    def points(spacing: float) -> torch.Tensor:
        axes = [torch.arange(float(lo[0]), float(hi[0]) + 1e-9, spacing, dtype=interior.dtype),
                torch.arange(bottom, float(hi[1]) + 1e-9, spacing, dtype=interior.dtype),
                torch.arange(float(lo[2]), float(hi[2]) + 1e-9, spacing, dtype=interior.dtype)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3) @ frame
        return grid[inside(grid)]

    size = float((hi - lo).max())
    small, large = cell * 0.5, size  # enough points at ``small``; too few at ``large``
    found = points(small)  # always the points at ``small``
    if len(found) < n_anchors:
        raise SgausError(f"only {len(found)} lattice points fit inside the object at half the hull's cell; "
                         f"ask for fewer anchors")
    for _ in range(30):
        mid = 0.5 * (small + large)
        at_mid = points(mid)
        if len(at_mid) >= n_anchors:
            small, found = mid, at_mid
        else:
            large = mid
        if large - small < 1e-4 * small:
            break
    return found[farthest_point_sampling(found, n_anchors, seed)].contiguous()


def detect_contact_frame(frames: FrameCache, ground_point, ground_normal, n_frames: int, g: Gaussians,
                         resolution: int = 32) -> int:
    """First frame whose visual hull reaches the ground plane (within two voxels); ``n_frames``
    when none does."""
    n = torch.tensor(ground_normal)
    p0 = torch.tensor(ground_point)
    centres = g.means.detach()
    lo, hi = centres.min(0).values, centres.max(0).values
    size = float((hi - lo).max())
    # the box spans from the object down to the ground and a little around it
    height = float(((centres - p0) @ n).max())
    lo2 = torch.minimum(lo, centres.mean(0) - n * height) - 0.5 * size
    hi2 = torch.maximum(hi, centres.mean(0)) + 0.5 * size
    step = float((hi2 - lo2).max()) / resolution
    grid = grid_points(lo2, hi2, step)
    for f in range(n_frames):
        inside = inside_visual_hull(grid, frames.alpha(f), frames.cameras)
        if inside.any() and float(((grid[inside] - p0) @ n).min()) <= 2.0 * step:
            return f
    return n_frames
