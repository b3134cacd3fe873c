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


def sample_anchors(g: Gaussians, frames: FrameCache, n_anchors: int, seed: int = 0, resolution: int = 48) -> torch.Tensor:
    """N_A anchors through the object's volume (Eq. 4): the inside of the visual hull carved
    from frame 0's masks, restricted to the Gaussians' bounding box, plus the Gaussian centres,
    thinned by farthest-point sampling."""
    keep = g.opacities() > 0.05
    centres = g.means[keep].detach() if keep.sum() > 0 else g.means.detach()
    lo, hi = centres.min(0).values, centres.max(0).values
    pad = 0.02 * (hi - lo).max()
    lo, hi = lo - pad, hi + pad
    step = (hi - lo).max() / resolution
    grid = grid_points(lo, hi, step)
    gen = torch.Generator().manual_seed(seed)
    grid = grid + (torch.rand(grid.shape, generator=gen) - 0.5) * step * 0.5
    interior = grid[inside_visual_hull(grid, frames.alpha(0), frames.cameras)]
    candidates = torch.cat([interior, centres], 0)
    if len(candidates) < n_anchors:
        raise SgausError(
            f"only {len(candidates)} candidate anchor points were found inside the object; ask for fewer anchors"
        )
    return candidates[farthest_point_sampling(candidates, n_anchors, seed)].contiguous()


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
