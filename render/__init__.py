"""Differentiable Gaussian splatting renderer (gsplat-style functional API)."""
import taichi_sim.runtime  # noqa: F401  (Taichi's environment defaults, before Taichi is imported)

from render.api import rasterization
from render.losses import l1_dssim_loss, psnr, ssim
from render.reference import rasterization_reference

__all__ = ["rasterization", "rasterization_reference", "l1_dssim_loss", "psnr", "ssim"]
