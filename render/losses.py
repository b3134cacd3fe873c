"""Image losses and quality measures for renders in [0, 1], images laid out [..., H, W, 3]."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # data range 1


def _ssim_window(dtype, device) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float32) - SSIM_WINDOW // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, w: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
    """Separable Gaussian blur of [N,C,H,W] without padding ("valid": [N,C,H-10,W-10]); with
    ``adjoint`` its transpose (zero padding 10, the window being symmetric), [N,C,H,W] again."""
    c, pad = x.shape[1], (SSIM_WINDOW - 1 if adjoint else 0)
    x = F.conv2d(x, w.view(1, 1, -1, 1).expand(c, 1, SSIM_WINDOW, 1), padding=(pad, 0), groups=c)
    return F.conv2d(x, w.view(1, 1, 1, -1).expand(c, 1, 1, SSIM_WINDOW), padding=(0, pad), groups=c)


class _SSIM(torch.autograd.Function):
    """Per-image SSIM [N] of x, y [N,C,H,W] in [0, 1] (the definition pytorch-msssim computes:
    11 x 11 Gaussian window of sigma 1.5, no padding, K = (0.01, 0.03), mean over channels and
    positions), with a hand-written gradient for x: with A1 = 2 mu_x mu_y + C1, A2 = 2 s_xy + C2,
    B1 = mu_x^2 + mu_y^2 + C1, B2 = s_xx + s_yy + C2 and S = A1 A2 / (B1 B2),

        dS/dmu_x = 2 mu_y (A2 - A1) / (B1 B2) + 2 mu_x S (1/B2 - 1/B1)
        dS/dE[x^2] = -S / B2,   dS/dE[xy] = 2 A1 / (B1 B2)

    blurred back (the blur's adjoint) and chained through E[x^2] = blur(x^2), E[xy] = blur(x y)
    (and the same with x and y swapped, S being symmetric).
    Autograd through the same formulas keeps a dozen full-size intermediates and runs twice as
    many elementwise passes; this is about a quarter faster at 512 x 512."""

    @staticmethod
    def forward(ctx, x, y):
        w = _ssim_window(x.dtype, x.device)
        c1, c2 = SSIM_K1**2, SSIM_K2**2
        # the five blurs in one call (channels stacked): a third less time than five calls
        mu_x, mu_y, e_xx, e_yy, e_xy = _blur(torch.cat([x, y, x * x, y * y, x * y], 1), w).chunk(5, 1)
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        s_xx = e_xx - mu_xx
        s_yy = e_yy - mu_yy
        s_xy = e_xy - mu_xy
        a1, a2 = 2 * mu_xy + c1, 2 * s_xy + c2
        b1, b2 = mu_xx + mu_yy + c1, s_xx + s_yy + c2
        luminance, contrast = a1 / b1, a2 / b2
        s = luminance * contrast
        ctx.per_image = s[0].numel()
        if any(ctx.needs_input_grad):  # S is symmetric in x and y: the same formulas serve y
            inv_b1, inv_b2 = 1.0 / b1, 1.0 / b2
            d_square = -s * inv_b2  # dS/dE[x^2] = dS/dE[y^2]
            d_mu_x = (2 * mu_y) * (a2 - a1) * (inv_b1 * inv_b2) + (2 * mu_x) * s * (inv_b2 - inv_b1)
            d_mu_y = (2 * mu_x) * (a2 - a1) * (inv_b1 * inv_b2) + (2 * mu_y) * s * (inv_b2 - inv_b1)
            ctx.save_for_backward(x, y, d_mu_x if ctx.needs_input_grad[0] else None,
                                  d_mu_y if ctx.needs_input_grad[1] else None, d_square, 2 * luminance * inv_b2)
        return s.flatten(1).mean(1)

    @staticmethod
    def backward(ctx, g):
        x, y, d_mu_x, d_mu_y, d_square, d_exy = ctx.saved_tensors
        w = _ssim_window(x.dtype, x.device)
        g = g.reshape(-1, 1, 1, 1) / ctx.per_image
        means = [d for d in (d_mu_x, d_mu_y) if d is not None]
        square, cross, *blurred = _blur(torch.cat([d_square, d_exy, *means], 1), w, True).chunk(2 + len(means), 1)
        gx = g * (blurred.pop(0) + 2 * x * square + y * cross) if d_mu_x is not None else None
        gy = g * (blurred.pop(0) + 2 * y * square + x * cross) if d_mu_y is not None else None
        return gx, gy


def _ssim_nchw(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [N] (see _SSIM)."""
    if min(p.shape[-2:]) < SSIM_WINDOW:
        raise SgausError(f"SSIM needs images of at least 11 x 11 pixels, got {p.shape[-1]} x {p.shape[-2]}")
    return _SSIM.apply(p, t)


def _windows(x: torch.Tensor) -> int:
    """Number of SSIM windows (per channel and image, summed) of [N,C,H,W] images."""
    return x.shape[0] * x.shape[1] * math.prod(s - SSIM_WINDOW + 1 for s in x.shape[-2:])


def _content_box(p: torch.Tensor, t: torch.Tensor) -> tuple[slice, slice] | None:
    """Rows and columns of [N,C,H,W] that hold every pixel where p or t is not exactly zero,
    widened by the SSIM window less one (10 pixels) on each side and clipped to the image; None
    when both images are zero everywhere or the box is the whole image (see l1_dssim_loss)."""
    with torch.no_grad():  # a row (column) holds a non-zero value where its largest or smallest is not 0
        rows = sum((x.amax(dim=(0, 1, 3)) != 0) | (x.amin(dim=(0, 1, 3)) != 0) for x in (p, t)).nonzero()[:, 0]
        cols = sum((x.amax(dim=(0, 1, 2)) != 0) | (x.amin(dim=(0, 1, 2)) != 0) for x in (p, t)).nonzero()[:, 0]
    H, W = p.shape[-2:]
    if len(rows) == 0:
        return None
    pad = SSIM_WINDOW - 1
    r0, r1 = max(0, int(rows[0]) - pad), min(H, int(rows[-1]) + 1 + pad)
    c0, c1 = max(0, int(cols[0]) - pad), min(W, int(cols[-1]) + 1 + pad)
    if (r1 - r0) * (c1 - c0) == H * W:
        return None
    return slice(r0, r1), slice(c0, c1)


def l1_dssim_loss(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """(1 - lambda) L1 + lambda (1 - SSIM), paper Eq. 18; a scalar averaged over all images.

    Renders on black against images composited on black are zero over most of a frame: there
    the L1 term is 0 and every SSIM window that sees zeros alone in both images scores exactly 1
    with exactly zero gradient (its means and variances are 0). So both terms are computed on the
    box holding every non-zero pixel of either image (widened by the window, see _content_box),
    and the windows outside it are counted as 1: the same loss and gradient as on the whole
    image up to the order of floating-point sums, for a fraction of the work (a 512 x 512 frame
    of a centred object: about a quarter of the pixels)."""
    if not 0.0 <= lambda_dssim <= 1.0:
        raise SgausError(f"lambda_dssim must lie in [0, 1], got {lambda_dssim}")
    p, t = _pair(pred, target)
    n_pixels, windows = p.numel(), _windows(p)
    box = _content_box(p, t) if lambda_dssim == 0.0 or min(p.shape[-2:]) >= SSIM_WINDOW else None
    if box is not None:  # contiguous: elementwise ops on the strided view run several times slower
        p, t = p[..., box[0], box[1]].contiguous(), t[..., box[0], box[1]].contiguous()
    l1 = (p - t).abs().sum() / n_pixels
    if lambda_dssim == 0.0:
        return l1
    s = _ssim_nchw(p, t)  # per image, mean over the box's windows
    crop_windows = _windows(p)
    ssim_mean = (s.sum() * (crop_windows / p.shape[0]) + (windows - crop_windows)) / windows
    return (1 - lambda_dssim) * l1 + lambda_dssim * (1 - ssim_mean)


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
    out = _ssim_nchw(p, t)
    return out[0] if pred.ndim == 3 else out
