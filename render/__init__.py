"""Differentiable Gaussian splatting renderer (gsplat-style functional API)."""
import os

os.environ.setdefault("TI_SKIP_VERSION_CHECK", "on")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")
