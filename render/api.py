"""The public entry point :func:`rasterization`: input checks, backend choice, final images."""
from __future__ import annotations

import torch

from render.inputs import check_inputs
from taichi_sim.errors import SgausError

BACKENDS = ("auto", "taichi", "reference", "gsplat")


def _gsplat_usable(device) -> bool:
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def rasterization(
    means: torch.Tensor,  # [N,3]
    scales: torch.Tensor,  # [N] isotropic std-dev (world units) or [N,3] with quats
    opacities: torch.Tensor,  # [N] in [0,1]
    colors: torch.Tensor,  # [N,3] activated RGB
    viewmats: torch.Tensor,  # [C,4,4] world-to-camera, OpenCV
    Ks: torch.Tensor,  # [C,3,3]
    width: int,
    height: int,
    background: torch.Tensor | None = None,  # [3], None = black
    quats: torch.Tensor | None = None,  # [N,4] wxyz, with [N,3] scales (None: axis-aligned)
    near_plane: float = 0.01,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render C views of N 3D Gaussians. Returns rgb [C,H,W,3], alpha [C,H,W,1] and depth
    [C,H,W,1] (alpha-weighted expected depth sum_i T_i alpha_i z_i divided by alpha where
    alpha > 0, else 0). Differentiable w.r.t. means, scales, quats, opacities, colors, viewmats.

    Rules (see render.projection and render.reference): Eq. 2 projection with a 0.3 px^2
    low-pass, Gaussians with z < near_plane dropped, a 3-sigma cut-off (d^T Sigma'^-1 d <= 9),
    alpha = min(0.99, opacity exp(-d^T Sigma'^-1 d / 2)), alpha < 1/255 skipped, front-to-back
    compositing (Eq. 3) stopping before T falls below 1e-4.

    backend: "auto" (gsplat when it and CUDA are present, else "taichi"), "taichi" (tiled,
    needs taichi_sim.runtime.init_taichi() first), "reference" (dense, small scenes only),
    "gsplat" (CUDA tensors and the gsplat package; its alpha clamp is 0.999).
    """
    if backend not in BACKENDS:
        raise SgausError(f"rasterization: unknown backend {backend!r} (choose one of {', '.join(BACKENDS)})")
    if backend == "auto":
        backend = "gsplat" if _gsplat_usable(means.device) else "taichi"
    args = check_inputs(means, scales, opacities, colors, viewmats, Ks, width, height, background, quats)
    means, scales, opacities, colors, viewmats, Ks, background, quats = args
    width, height = int(width), int(height)
    if backend == "reference":
        from render.reference import rasterization_reference

        return rasterization_reference(means, scales, opacities, colors, viewmats, Ks, width, height,
                                       background, quats, near_plane)
    if backend == "gsplat":
        if not _gsplat_usable(means.device):
            raise SgausError("rasterization: backend 'gsplat' needs the gsplat package, CUDA and CUDA tensors")
        return _rasterize_gsplat(means, scales, opacities, colors, viewmats, Ks, width, height,
                                 background, quats, near_plane)
    from render.tiled import rasterize_tiled

    return rasterize_tiled(means, scales, opacities, colors, viewmats, Ks, width, height, background, quats, near_plane)


def _rasterize_gsplat(means, scales, opacities, colors, viewmats, Ks, width, height, background, quats, near_plane):
    """Adapter to gsplat.rasterization (CUDA): same outputs as the other backends."""
    import gsplat

    n = means.shape[0]
    if scales.ndim == 1:
        scales = scales[:, None].expand(n, 3)
        quats = None
    if quats is None:
        quats = torch.zeros(n, 4, dtype=means.dtype, device=means.device)
        quats[:, 0] = 1
    out, alphas, _meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, render_mode="RGB+ED", packed=False,
    )
    rgb_fg, depth = out[..., :3], out[..., 3:4]
    rgb = rgb_fg if background is None else rgb_fg + (1 - alphas) * background
    return rgb, alphas, torch.where(alphas > 0, depth, torch.zeros_like(depth))
