"""The public entry point :func:`rasterization`: input checks, backend choice, final images."""
from __future__ import annotations

import torch

BACKENDS = ("auto", "taichi", "reference", "gsplat")


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def check_inputs(means, scales, opacities, colors, viewmats, Ks, width, height, background, quats):
    """Validate shapes (one clear ValueError line on bad input) and bring everything to one
    dtype and device (that of ``means``). Returns the checked tensors."""
    for name, t in (("means", means), ("scales", scales), ("opacities", opacities), ("colors", colors),
                    ("viewmats", viewmats), ("Ks", Ks)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"rasterization: {name} must be a torch tensor, got {type(t).__name__}")
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"rasterization: means must be [N,3], got {_shape(means)}")
    if not means.is_floating_point():
        raise ValueError(f"rasterization: means must be floating point, got {means.dtype}")
    n = means.shape[0]
    dtype, device = means.dtype, means.device
    if scales.shape not in ((n,), (n, 3)):
        raise ValueError(f"rasterization: scales must be [N] or [N,3] with N={n}, got {_shape(scales)}")
    if opacities.shape != (n,):
        raise ValueError(f"rasterization: opacities must be [N] with N={n}, got {_shape(opacities)}")
    if colors.shape != (n, 3):
        raise ValueError(f"rasterization: colors must be [N,3] with N={n}, got {_shape(colors)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"rasterization: viewmats must be [C,4,4], got {_shape(viewmats)}")
    if Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"rasterization: Ks must be [C,3,3] with C={viewmats.shape[0]}, got {_shape(Ks)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"rasterization: image size must be positive, got {width} x {height}")
    if quats is not None:
        if not isinstance(quats, torch.Tensor) or quats.shape != (n, 4):
            raise ValueError(f"rasterization: quats must be [N,4] (wxyz) with N={n}")
        quats = quats.to(dtype=dtype, device=device)
    if background is not None:
        background = torch.as_tensor(background, dtype=dtype, device=device)
        if background.shape != (3,):
            raise ValueError(f"rasterization: background must be [3], got {_shape(background)}")
    cast = lambda t: t.to(dtype=dtype, device=device)  # noqa: E731
    return (means, cast(scales), cast(opacities), cast(colors), cast(viewmats), cast(Ks), background, quats)


def finish_images(rgb_fg, alpha, depth_sum, background):
    """Add the background behind the foreground colour and normalise the depth:
    rgb = rgb_fg + (1 - alpha) bg; depth = depth_sum / alpha where alpha > 0, else 0."""
    rgb = rgb_fg if background is None else rgb_fg + (1 - alpha) * background
    covered = alpha > 0
    depth = torch.where(covered, depth_sum / torch.where(covered, alpha, torch.ones_like(alpha)), torch.zeros_like(alpha))
    return rgb, alpha, depth


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
        raise ValueError(f"rasterization: unknown backend {backend!r} (choose one of {', '.join(BACKENDS)})")
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
            raise ValueError("rasterization: backend 'gsplat' needs the gsplat package, CUDA and CUDA tensors")
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
