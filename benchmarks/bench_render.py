"""Renderer benchmark (not a test): forward and forward+backward time of the tiled Taichi
renderer against the dense PyTorch reference, with peak memory, in float32 on the CPU.

Scenes: N isotropic Gaussians (5k at 128^2, 20k at 256^2 and 512^2, 200k at 512^2, the paper
preset's cap on the static stage's Gaussians) spread uniformly over one camera's view at depths 2.5-3.5,
and 20k at 512^2 on an "object": a disc of radius 0.2 x the image side (13 % of the pixels) centred
at (0.5, 0.37) of the image, where the default scene's torus lies in its views (its paper-preset
fit holds about 19k Gaussians): the layout of a real fit, whose tiles with work lie together,
world scales chosen so the screen-space standard deviation is about 2 px, random opacities
in [0.3, 1] and colours. The reference is skipped when pixels x Gaussians exceeds
--ref-limit (it needs several [pixels, Gaussians] tensors). Each (scene, backend) runs in a
fresh subprocess so that its peak resident memory can be reported.

    python benchmarks/bench_render.py            # table
    python benchmarks/bench_render.py --json     # one JSON object (key fwd_bwd_s_20k_256, ...)

Times are medians of the repeats (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import taichi_sim  # noqa: E402,F401  (its environment defaults before PyTorch loads: taichi_sim/runtime.py)


# (Gaussians, image side, layout), one view
SCENES = [(5000, 128, "uniform"), (20000, 256, "uniform"), (20000, 512, "uniform"), (20000, 512, "object"),
          (200000, 512, "uniform")]
REPEATS = 7


def make_scene(n: int, side: int, layout: str = "uniform", seed: int = 0):
    import torch

    from pipeline.data.cameras import intrinsics_from_fov

    g = torch.Generator().manual_seed(seed)
    K = intrinsics_from_fov(50.0, side, side)
    fx = float(K[0, 0])
    z = 2.5 + torch.rand(n, generator=g)
    u = torch.rand(n, generator=g) * side
    v = torch.rand(n, generator=g) * side
    if layout == "object":  # a disc of radius 0.2 side, centred at (0.5, 0.37) of the image
        r = 0.2 * side * u.div(side).sqrt()
        angle = v.div(side) * 6.283185307179586
        u, v = 0.5 * side + r * torch.cos(angle), 0.37 * side + r * torch.sin(angle)
    means = torch.stack([(u - K[0, 2]) * z / fx, (v - K[1, 2]) * z / fx, z], dim=-1)
    scales = 2.0 * z / fx  # ~2 px screen-space std-dev
    opacities = 0.3 + 0.7 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    return means, scales, opacities, colors, torch.eye(4)[None], K[None]


def run_one(n: int, side: int, layout: str, backend: str) -> dict:
    """Time one (scene, backend) in this process; returns a dict of seconds and peak MB."""
    import torch

    from render import rasterization
    from taichi_sim.runtime import init_taichi

    torch.set_num_threads(os.cpu_count() or 1)
    init_taichi("cpu", default_fp="f32")
    means, scales, opacities, colors, viewmats, Ks = make_scene(n, side, layout)
    leaves = [t.clone().requires_grad_() for t in (means, scales, opacities, colors)]

    def forward():
        return rasterization(*leaves, viewmats, Ks, side, side, backend=backend)

    def forward_backward():
        rgb, alpha, depth = forward()
        loss = rgb.square().sum() + alpha.sum() + 0.1 * depth.sum()
        torch.autograd.grad(loss, leaves)

    forward_backward()  # warm-up: Taichi compiles its kernels here
    fwd, fb = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        with torch.no_grad():
            forward()
        fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        forward_backward()
        fb.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"fwd_s": statistics.median(fwd), "fwd_bwd_s": statistics.median(fb), "peak_mb": peak_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--ref-limit", type=float, default=1e8, help="largest pixels x Gaussians for the reference")
    ap.add_argument("--one", nargs=4, metavar=("N", "SIDE", "LAYOUT", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), int(args.one[1]), args.one[2], args.one[3])))
        return

    rows, result = [], {}
    for n, side, layout in SCENES:
        for backend in ("taichi", "reference"):
            tag = (f"{n // 1000}k_{side}" + ("" if layout == "uniform" else f"_{layout}")
                   + ("" if backend == "taichi" else "_reference"))
            if backend == "reference" and n * side * side > args.ref_limit:
                rows.append((n, side, layout, backend, None, f"skipped: {n} x {side * side} pixels = "
                             f"{n * side * side:.1e} > --ref-limit {args.ref_limit:.0e}"))
                result[f"fwd_s_{tag}"] = result[f"fwd_bwd_s_{tag}"] = None
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--one", str(n), str(side), layout, backend]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"benchmark of {backend} at {n}/{side} failed:\n{proc.stderr}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((n, side, layout, backend, r, ""))
            result[f"fwd_s_{tag}"], result[f"fwd_bwd_s_{tag}"] = r["fwd_s"], r["fwd_bwd_s"]
            result[f"peak_mb_{tag}"] = r["peak_mb"]
    if args.json:
        print(json.dumps(result))
        return
    print(f"renderer, float32, CPU ({os.cpu_count()} cores), 1 view, median of {REPEATS}")
    print(f"{'Gaussians':>9} {'image':>8} {'layout':>8} {'backend':>10} {'forward s':>10} {'fwd+bwd s':>10} "
          f"{'peak MB':>8}")
    for n, side, layout, backend, r, note in rows:
        if r is None:
            print(f"{n:>9} {side:>4}x{side:<3} {layout:>8} {backend:>10}   {note}")
        else:
            print(f"{n:>9} {side:>4}x{side:<3} {layout:>8} {backend:>10} {r['fwd_s']:>10.4f} {r['fwd_bwd_s']:>10.4f} "
                  f"{r['peak_mb']:>8.0f}")


if __name__ == "__main__":
    main()
