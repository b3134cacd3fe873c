"""Speed and memory of the spring-mass simulator: Taichi kernels against the PyTorch twin.

    python benchmarks/bench_sim.py [--json] [--arch auto|cpu|cuda] [--substeps N] [--torch-substeps N]

Prints ms per substep, forward and backward, for (N, K) = (512, 64) and (2048, 256) in f32, the
speed-up of Taichi fwd+bwd over our PyTorch twin (measured here, same run) and over the plain
PyTorch figures of REFERENCE.md section 4 (measured once on this kind of machine: 3.0 + 3.2 ms at
(512, 64), 70 + 46 = 116 ms at (2048, 256)), and the peak memory (RSS high-water mark, VmHWM,
reset before the run) of a full 20-frame x 100-substep backward at (2048, 256). Springs are
stretched 1 % so every spring is outside the dead zone and does the full work. "bwd" is the whole
backward of a rollout per substep with the default settings (the substep states are kept from the
forward pass within rollout's record_mb, about 40 bytes per anchor and substep: 164 MB for
20 x 100 substeps at N = 2048); "bwd recomp" is the same with record_mb=0 (every frame's substeps
recomputed from its frame checkpoint during backward, the least memory); "bwd kern" is the
gradient kernels alone. Targets on a 2-core CPU: fwd+bwd at least 20x faster than the twin, bwd at
most 3x fwd, peak under 1.5 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import taichi_sim  # noqa: E402,F401  (its environment defaults before PyTorch loads: taichi_sim/runtime.py)


# REFERENCE.md section 4: plain PyTorch autograd spring step, fwd + bwd ms per substep, 2-core CPU
REFERENCE_TORCH_MS = {(512, 64): 3.0 + 3.2, (2048, 256): 70.0 + 46.0}


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _scene(n, k, substeps):
    import torch

    from taichi_sim.spring_model import build_spring_model

    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(n, 3, generator=g) * 0.4 + torch.tensor([0.0, 0.3, 0.0])
    model = build_spring_model(anchors, k)
    x0 = (anchors - anchors.mean(0)) * 1.01 + anchors.mean(0)  # all springs stretched by 1 %
    params = [x0, torch.tensor([0.0, -1.0, 0.0]), torch.full((n,), 3.0), torch.tensor(0.0), torch.tensor(-1.0)]
    return model, params


def _rollout(model, ins, frames, substeps, backend="taichi", **kw):
    """(positions, v_last); the substep stays 0.03 s / 100 (the default) whatever number of
    substeps is timed."""
    from taichi_sim import spring_torch
    from taichi_sim.spring_params import SpringParams
    from taichi_sim.spring_rollout import Integrator, SpringState, rollout

    simulate = rollout if backend == "taichi" else spring_torch.rollout
    integ = Integrator(frame_dt=3e-4 * substeps, substeps=substeps, **kw)
    traj = simulate(model, SpringParams(*ins[2:]), SpringState(ins[0], ins[1]), frames, integ)
    return traj.positions, traj.v_last


def _time_rollout(model, params, substeps, frames, backend, repeats, **kw):
    """Best-of-``repeats`` ms per substep for the forward (no graph) and for the backward."""
    import torch

    best_f = best_b = float("inf")
    steps = substeps * frames
    for _ in range(repeats):
        with torch.no_grad():
            t0 = time.perf_counter()
            _rollout(model, params, frames, substeps, backend, **kw)
            best_f = min(best_f, (time.perf_counter() - t0) * 1e3 / steps)
        ins = [p.clone().requires_grad_(True) for p in params]
        pos, v = _rollout(model, ins, frames, substeps, backend, **kw)
        loss = pos[-1].square().sum() + v.square().sum()
        t0 = time.perf_counter()
        loss.backward()
        best_b = min(best_b, (time.perf_counter() - t0) * 1e3 / steps)
    return best_f, best_b


def _time_kernels(model, params, substeps, repeats):
    """ms per substep of the gradient kernels alone (no recomputation)."""
    import torch

    from taichi_sim.spring_params import SpringParams
    from taichi_sim.spring_rollout import FrameStepper, Integrator, SpringState, prepare_inputs

    integ = Integrator(frame_dt=3e-4 * substeps, substeps=substeps)
    prep = prepare_inputs(model, SpringParams(*params[2:]), SpringState(params[0], params[1]), 1, integ)
    sim = FrameStepper(prep, model)
    X, V, VH, C = sim.record(prep.x0.contiguous(), prep.v0.contiguous())
    n = X.shape[1]
    gx, gv = torch.randn(n, 3), torch.randn(n, 3)
    scratch = [torch.empty(n, 3) for _ in range(3)]
    gk, gkap, gfr = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(substeps):
            sim.grad_step(X[s], V[s], VH[s], C[s], gx, gv, gk, gkap, gfr, scratch)
        best = min(best, (time.perf_counter() - t0) * 1e3 / substeps)
    return best


def _full_backward_peak(frames=20, substeps=100):
    import torch

    model, params = _scene(2048, 256, substeps)
    params[0] = model.rest_positions.clone()  # a real drop: 20 frames from rest, falling
    ins = [p.clone().requires_grad_(True) for p in params]
    before_rss = _rss_mb()
    reset = _reset_hwm()
    before = _vm_hwm_mb() if reset else before_rss
    t0 = time.perf_counter()
    pos, v = _rollout(model, ins, frames, substeps)
    (pos.square().sum() + v.square().sum()).backward()
    seconds = time.perf_counter() - t0
    peak = _vm_hwm_mb()
    assert all(torch.isfinite(p.grad).all() for p in ins)
    return peak - before, peak, seconds, reset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--arch", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--substeps", type=int, default=50, help="substeps timed per Taichi measurement")
    ap.add_argument("--torch-substeps", type=int, default=3, help="substeps timed per torch-twin measurement")
    args = ap.parse_args()

    import torch

    from taichi_sim.runtime import init_taichi

    arch = init_taichi(args.arch, default_fp="f32")
    threads = torch.get_num_threads()
    result: dict = {"arch": arch, "torch_threads": threads, "cpu_count": os.cpu_count()}
    # warm-up: compile the f32 kernels
    model, params = _scene(64, 8, 2)
    _time_rollout(model, params, 2, 1, "taichi", 1)

    # peak memory first, before the torch twin's large autograd graphs raise the high-water mark
    delta, peak, seconds, reset = _full_backward_peak()
    result["peak_mb_full_backward_2048_256"] = round(delta, 1)
    result["peak_rss_mb_full_backward_2048_256"] = round(peak, 1)
    result["hwm_reset"] = reset
    result["seconds_full_20x100_fwd_bwd_2048_256"] = round(seconds, 2)

    rows = []
    for n, k in ((512, 64), (2048, 256)):
        model, params = _scene(n, k, args.substeps)
        tf, tb = _time_rollout(model, params, args.substeps, 1, "taichi", 3)
        tk = _time_kernels(model, params, args.substeps, 3)
        _f, tb_recomp = _time_rollout(model, params, args.substeps, 1, "taichi", 3, record_mb=0.0)
        model_t, params_t = _scene(n, k, args.torch_substeps)
        rf, rb = _time_rollout(model_t, params_t, args.torch_substeps, 1, "torch", 2)
        speedup = (rf + rb) / (tf + tb)
        ref = REFERENCE_TORCH_MS[(n, k)]
        rows.append((n, k, tf, tb, tb_recomp, tk, rf, rb, speedup, ref / (tf + tb)))
        tag = f"{n}_{k}"
        result.update({
            f"taichi_fwd_ms_{tag}": round(tf, 3), f"taichi_bwd_ms_{tag}": round(tb, 3),
            f"taichi_bwd_kernels_ms_{tag}": round(tk, 3),
            f"torch_fwd_ms_{tag}": round(rf, 3), f"torch_bwd_ms_{tag}": round(rb, 3),
            f"speedup_{tag}": round(speedup, 2), f"bwd_over_fwd_{tag}": round(tb / tf, 2),
            f"reference_torch_ms_{tag}": ref, f"speedup_vs_reference_{tag}": round(ref / (tf + tb), 2),
            f"bwd_kernels_over_fwd_{tag}": round(tk / tf, 2),
            f"taichi_bwd_recompute_ms_{tag}": round(tb_recomp, 3),
            f"bwd_recompute_over_fwd_{tag}": round(tb_recomp / tf, 2),
        })
    if args.json:
        print(json.dumps(result))
        return
    print(f"spring-mass simulator, f32, arch={arch}, {os.cpu_count()} CPUs; ms per substep (best of runs)")
    print(f"{'':>10} | {'Taichi':^37} | {'PyTorch twin':^17} | {'speed-up fwd+bwd':^17} | {'bwd/fwd':^15}")
    print(f"{'N':>5} {'K':>4} | {'fwd':>7} {'bwd':>7} {'bwd recomp':>10} {'bwd kern':>8} | {'fwd':>8} {'bwd':>8} | "
          f"{'vs twin':>8} {'vs REF':>8} | {'bwd':>6} {'recomp':>8}")
    for n, k, tf, tb, tr, tk, rf, rb, sp, sp_ref in rows:
        print(f"{n:>5} {k:>4} | {tf:>7.3f} {tb:>7.3f} {tr:>10.3f} {tk:>8.3f} | {rf:>8.2f} {rb:>8.2f} | "
              f"{sp:>7.1f}x {sp_ref:>7.1f}x | {tb / tf:>6.2f} {tr / tf:>8.2f}")
    print("vs twin: (twin fwd + bwd) / (Taichi fwd + bwd), both measured in this run; vs REF: REFERENCE.md "
          "section 4's plain PyTorch figure (" + ", ".join(f"{ms:g} ms at {nk}" for nk, ms in REFERENCE_TORCH_MS.items())
          + ") / (Taichi fwd + bwd)")
    print(f"full 20 frames x 100 substeps forward + backward at (2048, 256): {seconds:.1f} s, "
          f"peak RSS {peak:.0f} MB, {delta:.0f} MB above the start"
          + ("" if reset else " (high-water mark could not be reset: RSS before vs peak)"))


if __name__ == "__main__":
    main()
