"""Time of `sgaus generate-mpm` on its default scene: simulation (per substep and in total) and
rendering, separately.

    python benchmarks/bench_mpm.py [--json] [--arch auto|cpu|cuda] [--frames N] [--views N]
                                   [--resolution N] [--grid N]

Defaults are the command's: a torus of about 20k particles, 64^3 grid, 30 frames, 10 cameras at
512 x 512. Target on a 2-core CPU: the whole default scene in at most 5 minutes.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import taichi_sim  # noqa: E402,F401  (its environment defaults before PyTorch loads: taichi_sim/runtime.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--arch", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--grid", type=int, default=64)
    args = ap.parse_args()

    from taichi_sim.runtime import init_taichi

    arch = init_taichi(args.arch, default_fp="f32")
    from pipeline.generate import GenerateConfig, generate

    cfg = GenerateConfig(frames=args.frames, views=args.views, resolution=args.resolution, grid=args.grid)
    # warm-up: compile the kernels on a tiny scene so that compilation is not timed
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate(GenerateConfig(grid=32, frames=3, views=1, resolution=32), Path(tmp) / "warm", progress=False)
        compile_s = time.perf_counter() - t0
    timings: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        generate(cfg, Path(tmp) / "data", progress=not args.json, timings=timings)
    n_images = cfg.frames * cfg.views
    result = {
        "arch": arch,
        "n_particles": timings["n_particles"],
        "n_rendered_gaussians": timings["n_rendered"],
        "grid": cfg.grid,
        "frames": cfg.frames,
        "views": cfg.views,
        "resolution": cfg.resolution,
        "substeps": timings["substeps"],
        "ms_per_substep": 1000.0 * timings["simulate_s"] / max(1, timings["substeps"]),
        "simulate_s": timings["simulate_s"],
        "render_s": timings["render_s"],
        "ms_per_image": 1000.0 * timings["render_s"] / n_images,
        "write_s": timings["write_s"],
        "warmup_compile_s": compile_s,
        "total_s_default_scene": timings["total_s"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rows = [
        ("particles / rendered Gaussians", f"{result['n_particles']} / {result['n_rendered_gaussians']}"),
        ("grid, frames, views, image", f"{cfg.grid}^3, {cfg.frames}, {cfg.views}, {cfg.resolution}^2"),
        ("substeps simulated", f"{result['substeps']}"),
        ("simulation: ms per substep", f"{result['ms_per_substep']:.2f}"),
        ("simulation: total s", f"{result['simulate_s']:.1f}"),
        ("rendering: ms per image", f"{result['ms_per_image']:.1f}"),
        ("rendering: total s", f"{result['render_s']:.1f}"),
        ("PNG/npz writing: s", f"{result['write_s']:.1f}"),
        ("whole default scene: s", f"{result['total_s_default_scene']:.1f} (target <= 300)"),
        ("warm-up incl. compilation: s", f"{compile_s:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"generate-mpm benchmark on {arch}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
