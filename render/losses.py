"""Image losses and quality measures for renders in [0, 1], images laid out [..., H, W, 3]."""
from __future__ import annotations

import torch

from taichi_sim.errors import SgausError


def _to_nchw(img: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(img, torch.Tensor) or img.ndim < 3 or img.shape[-1] != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise SgausError(f"{name} must be an image tensor [..., H, W, 3], got {shape}")
    return img.reshape(-1, *img.shape[-3:]).permute(0, 3, 1, 2)


def _pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _to_nchw(pred, "pred"), _to_nchw(target, "target")
    if p.shape != t.shape:
        raise SgausError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return p, t.to(p.dtype)


def _ssim_nchw(p: torch.Tensor, t: torch.Tensor, size_average: bool) -> torch.Tensor:
    from pytorch_msssim import ssim as _ssim

    if min(p.shape[-2:]) < 11:
        raise SgausError(f"SSIM needs images of at least 11 x 11 pixels, got {p.shape[-1]} x {p.shape[-2]}")
    # pytorch-msssim: 11x11 Gaussian window (sigma 1.5), data range 1.
    return _ssim(p, t, data_range=1.0, size_average=size_average)


def l1_dssim_loss(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """(1 - lambda) L1 + lambda (1 - SSIM), paper Eq. 18; a scalar averaged over all images."""
    if not 0.0 <= lambda_dssim <= 1.0:
        raise SgausError(f"lambda_dssim must lie in [0, 1], got {lambda_dssim}")
    p, t = _pair(pred, target)
    l1 = (p - t).abs().mean()
    if lambda_dssim == 0.0:
        return l1
    return (1 - lambda_dssim) * l1 + lambda_dssim * (1 - _ssim_nchw(p, t, size_average=True))


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for images in [0, 1]: a scalar for [H,W,3], one value per image [B] for
    [B,H,W,3]; identical images give inf."""
    p, t = _pair(pred, target)
    mse = ((p - t) ** 2).flatten(1).mean(1)
    out = 10 * torch.log10(1.0 / mse)
    return out[0] if pred.ndim == 3 else out


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM (11x11 Gaussian window) for images in [0, 1]: a scalar for [H,W,3], [B] for [B,H,W,3]."""
    p, t = _pair(pred, target)
    out = _ssim_nchw(p, t, size_average=False)
    return out[0] if pred.ndim == 3 else out
