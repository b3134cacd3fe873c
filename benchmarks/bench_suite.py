"""Wall time of a fixed small suite (4 tiny tasks: two scenes x two methods, one seed) on a local Ray
with 1 and with 2 workers, and Ray's overhead per task against running the same tasks one after
another in this process with pipeline.suite.run_task.

    python benchmarks/bench_suite.py [--json]

The scenes are generated once beforehand and copied into each run's directory, so every mode
times the fits and evaluations only. Every mode gives a task one CPU (Taichi's and torch's
thread pools), so the in-process run is the 1-worker run without Ray. A Ray task runs in a fresh
worker process (its own Taichi runtime): the overhead includes starting Ray, starting that
process, importing torch and Taichi in it and loading the compiled kernels, which the in-process
run does once. The machine's load average is printed too: on shared cores it decides the ratio
of 2 workers to 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TI_SKIP_VERSION_CHECK", "on")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")
os.environ["TI_CPU_MAX_NUM_THREADS"] = "1"  # one CPU per task, as the Ray tasks ask for

VIDEO = dict(views=3, frames=8, fit_frames=6, resolution=48, grid=32, drop_height=0.1)
QUICK = {"iterations": 2, "static_iterations": 30, "refine_iterations": 5, "velocity_iterations": 3}
SPEC = {
    "name": "bench",
    "seeds": [0],
    "scenes": [{"name": "ball", "shape": "sphere", "seed": 1, **VIDEO},
               {"name": "ring", "shape": "torus", "youngs_modulus": 2e4, **VIDEO}],
    "methods": [{"name": "full", "preset": "tiny", "set": QUICK},
                {"name": "single_k", "preset": "tiny", "single_k": True, "set": QUICK}],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args()

    import torch

    from pipeline.suite import ensure_data, parse_spec, run_suite, run_task
    from taichi_sim.runtime import init_taichi

    torch.set_num_threads(1)
    init_taichi("cpu")
    suite = parse_spec(SPEC, Path.cwd(), "bench suite")
    tasks = suite.tasks()
    quiet = lambda *_: None  # noqa: E731
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sgaus-bench-suite-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        print(f"generating {len(suite.scenes)} tiny scenes once ...", flush=True)
        for sc in suite.scenes:
            ensure_data(sc, cache, "cpu")

        def fresh(name: str) -> Path:
            out = tmp / name
            shutil.copytree(cache / "data", out / "data")  # the scenes, generated once: a suite directory
            (out / "suite.json").write_text(json.dumps({"format": "sgaus-suite/1", "name": "bench"}))
            return out

        rows = []
        out = fresh("in_process")
        t0 = time.perf_counter()
        for t in tasks:
            run_task(t, out, "cpu")
        rows.append(("in one process (run_task)", time.perf_counter() - t0))
        print(f"  {rows[-1][0]:<28} {rows[-1][1]:7.1f} s", flush=True)

        import ray

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray.shutdown()
        ray_start_s = time.perf_counter() - t0

        for workers in (1, 2):
            out = fresh(f"ray_{workers}")
            t0 = time.perf_counter()
            doc = run_suite(suite, out, workers=workers, arch="cpu", progress=False, log=quiet)
            rows.append((f"Ray, {workers} worker{'s' if workers > 1 else ''}", time.perf_counter() - t0))
            if doc["summary"]["failed"]:
                raise SystemExit(f"bench_suite: {doc['summary']['failed']} task(s) failed: see {out / 'table.md'}")
            print(f"  {rows[-1][0]:<28} {rows[-1][1]:7.1f} s", flush=True)
    load1 = os.getloadavg()

    n = len(tasks)
    wall_in, wall_1, wall_2 = (r[1] for r in rows)
    overhead = (wall_1 - wall_in) / n
    print(f"\n{n} tiny tasks (fit + eval with baselines), one CPU each; scenes generated beforehand\n")
    print("| mode | wall s | s per task |")
    print("|---|---|---|")
    for label, wall in rows:
        print(f"| {label} | {wall:.1f} | {wall / n:.1f} |")
    print(f"\nRay start and stop alone: {ray_start_s:.1f} s")
    print(f"Ray overhead per task (1 worker against one process): {overhead:.1f} s")
    print(f"ratio 2 workers / 1 worker: {wall_2 / wall_1:.2f} (ideal 0.5 with 2 free cores)")
    print(f"load average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        print(json.dumps({"wall_s_1_worker": round(wall_1, 2), "wall_s_2_workers": round(wall_2, 2),
                          "overhead_s_per_task": round(overhead, 2), "wall_s_in_process": round(wall_in, 2),
                          "ratio_2_to_1": round(wall_2 / wall_1, 3), "ray_start_s": round(ray_start_s, 2),
                          "tasks": n, "cpus": os.cpu_count(), "load_average_start": round(load0[0], 2),
                          "load_average_end": round(load1[0], 2)}))


if __name__ == "__main__":
    main()
