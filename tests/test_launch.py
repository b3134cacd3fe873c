"""taichi_sim.launch: the short launch path gives what Taichi's own call gives."""
# no "from __future__ import annotations": Taichi reads the annotations as objects

import pytest
import taichi as ti
import torch

from taichi_sim.errors import SgausError
from taichi_sim.launch import fast


@ti.kernel
def _axpy(x: ti.types.ndarray(), y: ti.types.ndarray(), a: ti.f64, n: ti.i32, twice: ti.template(),
          out: ti.types.ndarray()):
    for i in range(n):
        r = a * x[i] + y[i]
        if ti.static(twice):
            r = 2 * r
        out[i] = r


def test_fast_launch_matches_taichi_call_for_each_signature(rng):
    k = fast(_axpy)
    for dtype in (torch.float64, torch.float32):
        x, y = torch.randn(50, generator=rng, dtype=dtype), torch.randn(50, generator=rng, dtype=dtype)
        for twice in (False, True):
            for n in (50, 20):
                want = torch.zeros(50, dtype=dtype)
                _axpy(x, y, 0.5, n, twice, want)
                for _ in range(2):  # the first call compiles through Taichi, the second takes the short path
                    got = torch.zeros(50, dtype=dtype)
                    k(x, y, 0.5, n, twice, got)
                    assert torch.equal(got, want)
    # one compiled launch per (dtype, template value): the scalar n is an argument, not a key
    assert len(k._compiled) == 4


def test_fast_launch_refuses_a_non_contiguous_tensor():
    k = fast(_axpy)
    x = torch.ones(50, dtype=torch.float64)
    out = torch.zeros(50, dtype=torch.float64)
    k(x, x, 1.0, 50, False, out)
    k(x, x, 1.0, 50, False, out)  # cached
    strided = torch.ones(100, dtype=torch.float64)[::2]
    with pytest.raises((SgausError, ValueError)):
        k(strided, x, 1.0, 50, False, out)


def test_fast_launch_takes_taichi_call_for_tensors_that_require_grad():
    k = fast(_axpy)
    x = torch.ones(10, dtype=torch.float64, requires_grad=True)
    y = torch.ones(10, dtype=torch.float64)
    out = torch.zeros(10, dtype=torch.float64)
    k(x.detach(), y, 3.0, 10, False, out)
    assert torch.equal(out, torch.full((10,), 4.0, dtype=torch.float64))
    out.zero_()
    k(x, y, 3.0, 10, False, out)  # Taichi's own path (it attaches a grad buffer): same values
    assert torch.equal(out, torch.full((10,), 4.0, dtype=torch.float64))


def test_fast_launch_survives_taichi_being_initialised_again():
    from taichi_sim.runtime import default_float, init_taichi

    k = fast(_axpy)
    x = torch.arange(8, dtype=torch.float64)
    out = torch.zeros(8, dtype=torch.float64)
    k(x, x, 1.0, 8, False, out)
    k(x, x, 1.0, 8, False, out)
    before = default_float()
    other = "f32" if before == "f64" else "f64"
    try:
        init_taichi("cpu", default_fp=other)  # a new Taichi program: what was compiled is gone
        for _ in range(2):
            out.zero_()
            k(x, x, 2.0, 8, True, out)
            assert torch.equal(out, 6 * x)
    finally:
        init_taichi("cpu", default_fp=before)
    out.zero_()
    k(x, x, 1.0, 8, False, out)
    assert torch.equal(out, 2 * x)
