"""Shared fixtures. Taichi is initialised once per session, on the CPU, in f64 so that
the Taichi kernels can be compared with their PyTorch twins and finite differences at
1e-6; kernels take their precision from the arrays they are given, so f32 runs too."""
from __future__ import annotations

import os

os.environ.setdefault("TI_SKIP_VERSION_CHECK", "on")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def taichi_runtime():
    from taichi_sim.runtime import init_taichi

    return init_taichi("cpu", default_fp="f64")


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)
