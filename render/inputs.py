"""What every rasterisation backend shares: the input checks and the final images (background,
normalised depth). A module of its own, so the backends and the entry point (render/api.py) all
import it and none imports another."""
from __future__ import annotations

import torch

from taichi_sim.errors import SgausError


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def check_inputs(means, scales, opacities, colors, viewmats, Ks, width, height, background, quats):
    """Validate shapes (one clear SgausError line on bad input) and bring everything to one
    dtype and device (that of ``means``). Returns the checked tensors."""
    for name, t in (("means", means), ("scales", scales), ("opacities", opacities), ("colors", colors),
                    ("viewmats", viewmats), ("Ks", Ks)):
        if not isinstance(t, torch.Tensor):
            raise SgausError(f"rasterization: {name} must be a torch tensor, got {type(t).__name__}")
    if means.ndim != 2 or means.shape[1] != 3:
        raise SgausError(f"rasterization: means must be [N,3], got {_shape(means)}")
    if not means.is_floating_point():
        raise SgausError(f"rasterization: means must be floating point, got {means.dtype}")
    n = means.shape[0]
    dtype, device = means.dtype, means.device
    if scales.shape not in ((n,), (n, 3)):
        raise SgausError(f"rasterization: scales must be [N] or [N,3] with N={n}, got {_shape(scales)}")
    if opacities.shape != (n,):
        raise SgausError(f"rasterization: opacities must be [N] with N={n}, got {_shape(opacities)}")
    if colors.shape != (n, 3):
        raise SgausError(f"rasterization: colors must be [N,3] with N={n}, got {_shape(colors)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise SgausError(f"rasterization: viewmats must be [C,4,4], got {_shape(viewmats)}")
    if Ks.shape != (viewmats.shape[0], 3, 3):
        raise SgausError(f"rasterization: Ks must be [C,3,3] with C={viewmats.shape[0]}, got {_shape(Ks)}")
    if int(width) <= 0 or int(height) <= 0:
        raise SgausError(f"rasterization: image size must be positive, got {width} x {height}")
    if quats is not None:
        if not isinstance(quats, torch.Tensor) or quats.shape != (n, 4):
            raise SgausError(f"rasterization: quats must be [N,4] (wxyz) with N={n}")
        quats = quats.to(dtype=dtype, device=device)
    if background is not None:
        background = torch.as_tensor(background, dtype=dtype, device=device)
        if background.shape != (3,):
            raise SgausError(f"rasterization: background must be [3], got {_shape(background)}")
    cast = lambda t: t.to(dtype=dtype, device=device)  # noqa: E731
    return (means, cast(scales), cast(opacities), cast(colors), cast(viewmats), cast(Ks), background, quats)


def finish_images(rgb_fg, alpha, depth_sum, background):
    """Add the background behind the foreground colour and normalise the depth:
    rgb = rgb_fg + (1 - alpha) bg; depth = depth_sum / alpha where alpha > 0, else 0."""
    rgb = rgb_fg if background is None else rgb_fg + (1 - alpha) * background
    covered = alpha > 0
    depth = torch.where(covered, depth_sum / torch.where(covered, alpha, torch.ones_like(alpha)), torch.zeros_like(alpha))
    return rgb, alpha, depth
