"""Taichi start-up in one place.

``ti.init`` is called only from the CLI and from test fixtures, through :func:`init_taichi`.
``arch="auto"`` picks CUDA when torch sees a GPU and the CPU otherwise; ``ti.gpu`` is never
used because it segfaults on machines without a GPU (it falls through to OpenGL).
"""
from __future__ import annotations

import contextlib
import io
import os

os.environ.setdefault("TI_SKIP_VERSION_CHECK", "on")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")
# PyTorch's OpenMP threads spin after each parallel op (libgomp's default: 300,000 rounds) and so
# take the cores from Taichi's own threads in the kernel launched next: on 2 cores the renderer's
# forward + backward at 20k Gaussians and 256^2 took 0.070 s with the default, 0.056 s with
# 10,000 rounds, and a fast-preset fit 235 s against 218 s (sleeping at once, OMP_WAIT_POLICY=
# PASSIVE, slowed PyTorch's own work more: 265 s). Read when PyTorch loads libgomp, so this module
# is imported before torch (taichi_sim/__init__.py; the CLI, the tests and the benchmarks).
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import taichi as ti  # noqa: E402
from taichi_sim.errors import SgausError

ARCHES = ("auto", "cpu", "cuda")
_state: dict = {"arch": None, "default_fp": None}


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def init_taichi(arch: str = "auto", default_fp: str = "f32", debug: bool = False) -> str:
    """Initialise Taichi once per process and return the arch in use ("cpu" or "cuda").

    Calling it again with the same settings is a no-op; with other settings Taichi is
    reset and re-initialised (kernels recompile, fields allocated before are lost).
    """
    if arch not in ARCHES:
        raise SgausError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHES)}")
    if default_fp not in ("f32", "f64"):
        raise SgausError(f"default_fp must be 'f32' or 'f64', not {default_fp!r}")
    if arch == "auto":
        arch = "cuda" if cuda_available() else "cpu"
    elif arch == "cuda" and not cuda_available():
        raise SgausError("--arch cuda was asked for, but no CUDA device is available")
    if _state["arch"] == arch and _state["default_fp"] == default_fp:
        return arch
    if _state["arch"] is not None:
        ti.reset()
    # ti.init prints "[Taichi] Starting on arch=..." with print(); keep stdout for our output
    with contextlib.redirect_stdout(io.StringIO()):
        ti.init(
            arch=ti.cuda if arch == "cuda" else ti.cpu,
            default_fp=ti.f64 if default_fp == "f64" else ti.f32,
            default_ip=ti.i32,
            debug=debug,
            log_level=ti.WARN,
            random_seed=0,
        )
    _state["arch"], _state["default_fp"] = arch, default_fp
    return arch


def default_float() -> str | None:
    """The default float precision Taichi was initialised with ("f32" or "f64"), or None before."""
    return _state["default_fp"]


def current_arch() -> str | None:
    """The arch Taichi was initialised with, or None before :func:`init_taichi`."""
    return _state["arch"]


def require_taichi() -> None:
    """Raise a clear error when a Taichi kernel is about to run before initialisation."""
    if _state["arch"] is None:
        raise RuntimeError("Taichi is not initialised: call taichi_sim.runtime.init_taichi() first")


# Taichi 1.7's CPU backend hands its threads a parallel loop in blocks of at least this many
# iterations, whatever ti.loop_config(block_dim=...) or ti.init(default_cpu_block_dim=...) ask
# for: a loop over 256 tiles or 512 anchors ran on one thread (same wall and CPU time on 2 cores,
# half the wall time from 1000 iterations on). See :func:`task_spread`.
CPU_LOOP_BLOCK = 512


def cpu_threads() -> int:
    """The threads a parallel loop runs on: Taichi's CPU thread count (``cpu_max_num_threads``,
    the machine's cores unless set), 1 on CUDA. Taichi 1.7's CPU backend splits a parallel
    loop's range into that many contiguous parts, one per thread (measured: two tiles of work
    300 loop slots apart ran on one thread of 2, 600 apart on both), so work that lies together
    in index order is dealt round-robin by the kernels that know it (render.tiled)."""
    if _state["arch"] != "cpu":
        return 1
    return max(1, int(ti.lang.impl.current_cfg().cpu_max_num_threads))


def task_spread(items_per_task: int) -> int:
    """How many loop indices to spend per item so that a parallel loop over n items runs in
    tasks of ``items_per_task`` items: a kernel loops over ``range(n * S)`` and works on item
    ``k // S`` where ``k % S == 0``; the indices in between cost a comparison each. 1 on CUDA,
    whose threads take single iterations. Read at compile time (``ti.static``), after
    :func:`init_taichi`."""
    if _state["arch"] == "cuda":
        return 1
    return max(1, CPU_LOOP_BLOCK // max(1, int(items_per_task)))
