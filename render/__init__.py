"""Differentiable Gaussian splatting renderer (gsplat-style functional API)."""
import os

os.environ.setdefault("TI_SKIP_VERSION_CHECK", "on")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")

from render.api import rasterization  # noqa: E402
from render.losses import l1_dssim_loss, psnr, ssim  # noqa: E402
from render.reference import rasterization_reference  # noqa: E402

__all__ = ["rasterization", "rasterization_reference", "l1_dssim_loss", "psnr", "ssim"]
