"""The dense reference rasteriser: every pixel against every Gaussian, in plain PyTorch.

It is the obviously-correct twin of the fast path (same signature, same rules) and is used
by the tests; memory grows as pixels x Gaussians, so keep it to small images and scenes.

Compositing (paper Eq. 3), per pixel, over the Gaussians sorted by camera depth z:

    q_i     = d_i^T Sigma'_i^-1 d_i,  d_i = pixel centre - projected centre
    alpha_i = min(0.99, opacity_i exp(-q_i / 2)), and 0 where q_i > 9 or alpha_i < 1/255
    T_i     = prod_{j<i} (1 - alpha_j); compositing stops before the first Gaussian that would
              take T below 1e-4 (that Gaussian and all behind it are left out, as in 3DGS)
    rgb     = sum_i T_i alpha_i colour_i + T_final background
    alpha   = 1 - T_final
    depth   = sum_i T_i alpha_i z_i / alpha   (0 where alpha = 0): the expected depth of the
              visible surface, not biased towards 0 at soft edges
"""
from __future__ import annotations

import torch

from render.inputs import check_inputs, finish_images
from render.projection import ALPHA_MAX, ALPHA_MIN, CUTOFF_MAHALANOBIS2, T_MIN, conic_of, project_gaussians


def composite_dense(
    means2d: torch.Tensor,  # [N,2]
    conics: torch.Tensor,  # [N,3]
    opacities: torch.Tensor,  # [N]
    colors: torch.Tensor,  # [N,3]
    depths: torch.Tensor,  # [N]
    width: int,
    height: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Front-to-back compositing of Gaussians already sorted near to far. Returns the
    foreground colour [H,W,3] (no background), alpha [H,W,1] and sum T_i alpha_i z_i [H,W,1]."""
    dtype, device = means2d.dtype, means2d.device
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # [P,2]
    d = pix[:, None, :] - means2d[None, :, :]  # [P,N,2]
    dx, dy = d[..., 0], d[..., 1]
    q = conics[:, 0] * dx * dx + 2 * conics[:, 1] * dx * dy + conics[:, 2] * dy * dy  # [P,N]
    alpha = torch.clamp(opacities * torch.exp(-0.5 * q), max=ALPHA_MAX)
    alpha = torch.where((q <= CUTOFF_MAHALANOBIS2) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    with torch.no_grad():  # early stop: drop the first Gaussian that would take T below T_MIN, and all after
        t_excl = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=1), dim=1)
        keep = t_excl * (1 - alpha) >= T_MIN
    alpha = alpha * keep
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha], dim=1), dim=1)  # [P,N+1]
    weights = alpha * trans[:, :-1]  # T_i alpha_i
    rgb = weights @ colors
    depth_sum = weights @ depths
    acc = 1 - trans[:, -1]
    return rgb.reshape(height, width, 3), acc.reshape(height, width, 1), depth_sum.reshape(height, width, 1)


def rasterization_reference(
    means: torch.Tensor,  # [N,3]
    scales: torch.Tensor,  # [N] or [N,3]
    opacities: torch.Tensor,  # [N]
    colors: torch.Tensor,  # [N,3]
    viewmats: torch.Tensor,  # [C,4,4]
    Ks: torch.Tensor,  # [C,3,3]
    width: int,
    height: int,
    background: torch.Tensor | None = None,  # [3]
    quats: torch.Tensor | None = None,  # [N,4] wxyz
    near_plane: float = 0.01,
    backend: str = "reference",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense twin of :func:`render.rasterization` (``backend`` is accepted and ignored).
    Returns rgb [C,H,W,3], alpha [C,H,W,1], depth [C,H,W,1]."""

    means, scales, opacities, colors, viewmats, Ks, background, quats = check_inputs(
        means, scales, opacities, colors, viewmats, Ks, width, height, background, quats
    )
    means2d, cov2d, depths, valid = project_gaussians(means, scales, quats, viewmats, Ks, width, height, near_plane)
    conics = conic_of(cov2d)
    outs = []
    for c in range(len(viewmats)):
        idx = torch.nonzero(valid[c]).squeeze(1)
        idx = idx[torch.argsort(depths[c, idx], stable=True)]
        outs.append(
            composite_dense(means2d[c, idx], conics[c, idx], opacities[idx], colors[idx], depths[c, idx], width, height)
        )
    rgb_fg, alpha, depth_sum = (torch.stack(x) for x in zip(*outs))
    return finish_images(rgb_fg, alpha, depth_sum, background)
