"""Wall time and peak memory of each stage of `sgaus fit --preset fast` on the demo scene, and
seconds per dynamic iteration at the paper preset.

    python benchmarks/bench_fit.py [--data DIR] [--json] [--arch auto|cpu|cuda]

Without --data it generates the demo scene (as `make demo` does) into a temporary directory.
Target on a 2-core CPU: the fast preset end to end in at most 10 minutes.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM on Linux
    except OSError:
        pass


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(label, rows, fn, *args, **kw):
    reset_peak_rss()
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    rows.append((label, time.perf_counter() - t0, peak_rss_mb()))
    print(f"  {label:<10} {rows[-1][1]:8.1f} s  {rows[-1][2]:8.0f} MB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="dataset to fit (default: generate the demo scene)")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    ap.add_argument("--arch", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--skip-paper", action="store_true", help="skip the paper-preset iteration timing")
    args = ap.parse_args()

    from click.testing import CliRunner

    from cli import cli
    from pipeline.asset import save_asset
    from pipeline.fit import dynamic as dynamic_stage
    from pipeline.fit.physics import spring_model
    from pipeline.fit.runner import Fitter
    from pipeline.settings import make_settings
    from taichi_sim.runtime import init_taichi

    arch = init_taichi(args.arch, "f32")
    tmp = Path(tempfile.mkdtemp(prefix="sgaus_bench_fit_"))
    data = args.data
    rows: list = []
    if data is None:
        data = tmp / "data"
        print("generating the demo scene ...", flush=True)
        reset_peak_rss()
        t0 = time.perf_counter()
        r = CliRunner().invoke(cli, ["--arch", arch, "generate-mpm", "--shape", "torus", "--views", "6",
                                     "--frames", "30", "--resolution", "128", "--out", str(data)])
        if r.exit_code != 0:
            raise SystemExit(r.output)
        gen_s = time.perf_counter() - t0
        print(f"  generate   {gen_s:8.1f} s", flush=True)

    settings = make_settings("fast")
    print(f"fit --preset fast on {data} (arch {arch}):", flush=True)
    t_all = time.perf_counter()
    f = Fitter(data, tmp / "run", settings, progress=False, log=lambda *_: None)
    g, k1 = timed("static", rows, f.static)
    a, k2 = timed("anchors", rows, f.anchors, g, k1)
    g2, k3 = timed("refine", rows, f.refine, g, a, k2)
    model = spring_model(a, f.facts, settings.physics())
    v0, k4 = timed("velocity", rows, f.velocity, g2, model, a, k3)
    r = timed("dynamic", rows, f.dynamic, g2, model, a, v0, k4)[0]
    save_asset(tmp / "run" / "asset", f.make_asset(g2, model, a, v0, r))
    total = time.perf_counter() - t_all
    dyn_s = [x for x in rows if x[0] == "dynamic"][0][1]

    paper_iter_s = None
    if not args.skip_paper:
        # one dynamic iteration with the paper's simulator settings (2048 anchors, k = 256, 100
        # substeps, authors' per-frame truncation) on the same Gaussians at full resolution
        paper = make_settings("paper", overrides={"iterations": 1})
        from pipeline.data.frames import FrameCache
        from pipeline.fit import anchors as anchors_stage

        frames = FrameCache(f.ds, 1.0)
        pa = anchors_stage.run(g2, frames, paper.anchors())
        pmodel = spring_model(pa, f.facts, paper.physics())
        t0 = time.perf_counter()
        dynamic_stage.run(g2, pmodel, pa.binding, v0, frames, f.facts.fit_frames, f.facts.frame_dt, paper.dynamic(),
                          progress=False)
        paper_iter_s = time.perf_counter() - t0

    print()
    print("| stage | wall s | peak RSS MB |")
    print("|---|---|---|")
    for label, s, mb in rows:
        print(f"| {label} | {s:.1f} | {mb:.0f} |")
    print(f"| **fast preset total** | {total:.1f} | {max(r[2] for r in rows):.0f} |")
    print(f"\nfast preset: {total:.1f} s end to end (target <= 600 s): {'OK' if total <= 600 else 'MISSED'}")
    print(f"fast preset dynamic stage: {dyn_s / max(settings.iterations, 1):.2f} s per iteration")
    if paper_iter_s is not None:
        print(f"paper preset: {paper_iter_s:.1f} s per dynamic iteration (x300 iterations = {paper_iter_s * 300 / 60:.0f} min)")
    if args.json:
        print(json.dumps({
            "arch": arch,
            "fast_preset_total_s": total,
            "stages": {label: {"wall_s": s, "peak_rss_mb": mb} for label, s, mb in rows},
            "fast_dynamic_s_per_iteration": dyn_s / max(settings.iterations, 1),
            "paper_dynamic_s_per_iteration": paper_iter_s,
        }))


if __name__ == "__main__":
    main()
