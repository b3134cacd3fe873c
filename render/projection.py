"""Projection of 3D Gaussians to screen space (paper Eq. 2), shared by every backend.

A Gaussian with centre ``m`` and covariance ``Sigma`` seen by a camera with world-to-camera
rotation ``W`` and translation ``t`` (OpenCV: +x right, +y down, +z forward) becomes a 2D
Gaussian with centre ``(fx x/z + cx, fy y/z + cy)`` for ``(x, y, z) = W m + t`` and covariance

    Sigma' = J W Sigma W^T J^T + 0.3 I        (Eq. 2, plus the 3DGS low-pass)

where ``J`` is the Jacobian of the perspective map at the camera-space centre. Two
conventions from 3D Gaussian Splatting are kept:

* ``LOW_PASS`` = 0.3 px^2 is added to the diagonal of ``Sigma'``: every splat covers at least
  about one pixel, which anti-aliases tiny Gaussians and keeps ``Sigma'`` invertible.
* inside ``J`` (only there, never for the centre) ``x/z`` and ``y/z`` are clamped to 1.3 times
  the half field of view beyond the image border, so Gaussians far outside the view near the
  camera plane do not get unbounded footprints.

Everything here is plain PyTorch and differentiable w.r.t. means, scales, quats and viewmats.
"""
from __future__ import annotations

import torch

LOW_PASS = 0.3  # px^2 added to the diagonal of the 2D covariance (3DGS)
CUTOFF_MAHALANOBIS2 = 9.0  # a splat is evaluated only where d^T Sigma'^-1 d <= 3^2 (3 sigma)
ALPHA_MAX = 0.99  # alpha = min(0.99, opacity * exp(-0.5 d^T Sigma'^-1 d))  (Eq. 3 with 3DGS' clamp)
ALPHA_MIN = 1.0 / 255.0  # contributions below this alpha are skipped
T_MIN = 1e-4  # compositing stops before the transmittance would fall below this
FOV_CLAMP = 1.3  # clamp of x/z, y/z inside J, in units of the half field of view


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N,3,3] from quaternions [N,4] (w, x, y, z), normalised here."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def covariance_3d(scales: torch.Tensor, quats: torch.Tensor | None) -> torch.Tensor:
    """World-space covariances [N,3,3]: s^2 I for isotropic scales [N], R diag(s^2) R^T for [N,3]."""
    if scales.ndim == 1:
        eye = torch.eye(3, dtype=scales.dtype, device=scales.device)
        return (scales * scales)[:, None, None] * eye
    if quats is None:
        return torch.diag_embed(scales * scales)
    R = quat_to_rotmat(quats)
    M = R * scales[:, None, :]  # R diag(s)
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: torch.Tensor,  # [N,3]
    scales: torch.Tensor,  # [N] or [N,3]
    quats: torch.Tensor | None,  # [N,4] wxyz or None
    viewmats: torch.Tensor,  # [C,4,4] world-to-camera, OpenCV
    Ks: torch.Tensor,  # [C,3,3]
    width: int,
    height: int,
    near_plane: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Screen-space centres [C,N,2] (pixel units, pixel (u,v) centred at (u+0.5, v+0.5)),
    2D covariances [C,N,2,2] (low-pass included), depths z [C,N] and a mask [C,N] of the
    Gaussians in front of the near plane. Culled entries hold finite dummy values."""
    R = viewmats[:, :3, :3]  # [C,3,3]
    t = viewmats[:, :3, 3]  # [C,3]
    p_cam = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C,N,3]
    x, y, z = p_cam.unbind(-1)
    valid = (z >= near_plane) & torch.isfinite(p_cam).all(-1)
    z_safe = torch.where(valid, z, torch.ones_like(z))  # culled entries: no inf/NaN in autograd
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tx, ty = x / z_safe, y / z_safe
    means2d = torch.stack([fx * tx + cx, fy * ty + cy], dim=-1)

    # Jacobian of (x, y, z) -> (fx x/z + cx, fy y/z + cy) with x/z, y/z clamped (3DGS).
    half_x, half_y = 0.5 * width / fx, 0.5 * height / fy
    tx_c = torch.minimum(torch.maximum(tx, -cx / fx - (FOV_CLAMP - 1) * half_x), (width - cx) / fx + (FOV_CLAMP - 1) * half_x)
    ty_c = torch.minimum(torch.maximum(ty, -cy / fy - (FOV_CLAMP - 1) * half_y), (height - cy) / fy + (FOV_CLAMP - 1) * half_y)
    j0, j1 = fx / z_safe, fy / z_safe  # J = [[j0, 0, j2], [0, j1, j3]]
    j2, j3 = -fx * tx_c / z_safe, -fy * ty_c / z_safe
    if scales.ndim == 1:
        # isotropic: W (s^2 I) W^T = s^2 W W^T, so J W Sigma W^T J^T = s^2 J M J^T with M = W W^T
        # one 3x3 per camera; written out over J's zeros, elementwise over [C,N] (no [C,N,3,3] products)
        M = (R @ R.transpose(-1, -2))[:, None]  # [C,1,3,3]
        s2 = scales * scales
        r0 = (j0 * M[..., 0, 0] + j2 * M[..., 2, 0], j0 * M[..., 0, 1] + j2 * M[..., 2, 1],
              j0 * M[..., 0, 2] + j2 * M[..., 2, 2])  # row 0 of J M
        r1 = (j1 * M[..., 1, 0] + j3 * M[..., 2, 0], j1 * M[..., 1, 1] + j3 * M[..., 2, 1],
              j1 * M[..., 1, 2] + j3 * M[..., 2, 2])  # row 1 of J M
        sxx = s2 * (r0[0] * j0 + r0[2] * j2) + LOW_PASS
        sxy = s2 * (r0[1] * j1 + r0[2] * j3)
        syx = s2 * (r1[0] * j0 + r1[2] * j2)
        syy = s2 * (r1[1] * j1 + r1[2] * j3) + LOW_PASS
        cov2d = torch.stack([sxx, sxy, syx, syy], dim=-1).reshape(*z.shape, 2, 2)
        return means2d, cov2d, z_safe, valid
    zero = torch.zeros_like(z_safe)
    J = torch.stack([j0, zero, j2, zero, j1, j3], dim=-1).reshape(*z.shape, 2, 3)  # [C,N,2,3]
    sigma = covariance_3d(scales, quats)  # [N,3,3]
    sigma_cam = R[:, None] @ sigma[None] @ R[:, None].transpose(-1, -2)  # W Sigma W^T  [C,N,3,3]
    cov2d = J @ sigma_cam @ J.transpose(-1, -2)  # Eq. 2
    cov2d = cov2d + LOW_PASS * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    return means2d, cov2d, z_safe, valid


def conic_of(cov2d: torch.Tensor) -> torch.Tensor:
    """Inverse 2D covariance as (a, b, c) [...,3]: d^T Sigma'^-1 d = a dx^2 + 2 b dx dy + c dy^2."""
    sxx, sxy, syy = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = (sxx * syy - sxy * sxy).clamp_min(1e-12)
    return torch.stack([syy / det, -sxy / det, sxx / det], dim=-1)
