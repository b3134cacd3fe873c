"""Time per stage of `sgaus fit`: the fast preset end to end, and the paper preset measured
stage by stage on a few iterations and extrapolated to its iteration counts.

    python benchmarks/bench_fit.py                   # --preset fast: wall time and peak memory per stage
    python benchmarks/bench_fit.py --preset paper    # seconds per iteration of every stage, shares, total
    python benchmarks/bench_fit.py --preset paper --json

Without --data both use the default generate-mpm scene (torus, 10 views, 512 x 512, 30 frames),
generated once into bench_out/scene_default and reused.

--preset paper runs each stage's own code (pipeline/fit/*) with the paper preset's settings but
a few iterations, on Gaussians carved from the visual hull (--gaussians of them; the default is the
preset's cap on densification, 200,000, the most the static stage can leave; the later stages work
on that many), and splits each iteration's time into simulation, rendering, binding (the Gaussians'
deformation, Eq. 15), loss and optimiser: every call of those is wrapped by a timer, and its
backward time is taken between identity autograd nodes placed on its outputs (the gradient
arrives) and on its inputs (the gradient leaves). The rest is "other" (Python, gradient clipping,
densification statistics). The estimated total is the sum over stages of seconds per iteration
times the preset's iteration count; the static stage's seconds per iteration are measured at the
initial count and at --gaussians, and the count is taken to grow linearly over the densification
window (3DGS' schedule: iterations 10 % .. 60 %) and to stay there after it: an upper bound, as
densification seldom reaches the cap. With --static-from RUN (a paper fit of the same data, which
records the count after every densification in RUN/stages/static/stage.json) the count follows
that fit's record instead, the time per iteration is measured at the initial and the largest count
(linear in between), and the later stages start from that fit's Gaussians.

    python benchmarks/bench_fit.py --preset paper --static-from RUN
It also measures the fast preset end to end (`fast_total_s`; --skip-fast leaves it out).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import taichi_sim  # noqa: E402,F401  (its environment defaults before PyTorch loads: taichi_sim/runtime.py)

PARTS = ("simulation", "rendering", "binding", "loss", "optimiser")
DEFAULT_SCENE = ROOT / "bench_out" / "scene_default"


# ----------------------------------------------------------------------------- memory
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


# ----------------------------------------------------------------------------- timers
class Stopwatch:
    """Seconds spent in each part (forward and backward), filled by the wrappers of :meth:`patch`.

    A wrapped call's forward time is its wall time. Its backward time runs from the moment the
    gradient of its outputs is complete (an identity autograd node on each output records it)
    to the moment the last gradient of its inputs has been computed (one on each input). On the
    CPU, autograd runs the nodes one after another, so nothing else runs in between in these
    stages' chains (loss <- render <- binding <- rollout)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self._open: list[list] = []  # [part, first output-gradient time, last input-gradient time]

    def reset(self) -> None:
        self.seconds.clear()
        self._open.clear()

    def collect(self) -> dict:
        """The parts' seconds so far, backward intervals included (call after backward)."""
        for part, t_out, t_in in self._open:
            if t_out is not None and t_in is not None:
                self.seconds[part] += max(0.0, t_in - t_out)
        self._open.clear()
        return dict(self.seconds)

    def _wrap(self, part: str, fn):
        import torch

        watch = self

        class _Mark(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, record):
                ctx.record = record
                return x.view_as(x)

            @staticmethod
            def backward(ctx, g):
                ctx.record()
                return g, None

        def mark(value, record):
            if isinstance(value, torch.Tensor):
                return _Mark.apply(value, record) if value.requires_grad and torch.is_grad_enabled() else value
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                changes = {f.name: mark(getattr(value, f.name), record) for f in dataclasses.fields(value)
                           if isinstance(getattr(value, f.name), torch.Tensor)}
                return dataclasses.replace(value, **changes) if changes else value
            if isinstance(value, tuple):
                return type(value)(mark(v, record) for v in value)
            return value

        def wrapped(*args, **kw):
            slot = [part, None, None]

            def output_grad():
                if slot[1] is None:
                    slot[1] = time.perf_counter()

            def input_grad():
                slot[2] = time.perf_counter()

            args = tuple(mark(a, input_grad) for a in args)
            kw = {k: mark(v, input_grad) for k, v in kw.items()}
            t0 = time.perf_counter()
            out = fn(*args, **kw)
            watch.seconds[part] += time.perf_counter() - t0
            watch._open.append(slot)
            return mark(out, output_grad)

        return wrapped

    @contextmanager
    def patch(self):
        """Wrap the simulation, rendering, binding, loss and optimiser calls of the fit stages."""
        import torch

        import render
        from pipeline.fit import dynamic, global_search, refine, static, velocity

        saved = []

        def put(obj, name, part):
            saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, self._wrap(part, getattr(obj, name)))

        for mod in (dynamic, global_search, velocity):
            put(mod, "rollout", "simulation")
            put(mod, "apply_binding", "binding")
        for mod in (dynamic, global_search, refine, velocity):
            put(mod, "l1_dssim_loss", "loss")
        put(render, "l1_dssim_loss", "loss")  # the static stage imports it when it runs
        put(render, "rasterization", "rendering")  # Gaussians.render_full imports it when called
        saved.append((torch.optim.Adam, "step", torch.optim.Adam.step))
        adam_step = torch.optim.Adam.step

        def step(opt, *a, **kw):
            t0 = time.perf_counter()
            out = adam_step(opt, *a, **kw)
            self.seconds["optimiser"] += time.perf_counter() - t0
            return out

        torch.optim.Adam.step = step
        try:
            yield self
        finally:
            for obj, name, value in reversed(saved):
                setattr(obj, name, value)


# ----------------------------------------------------------------------------- scene
def default_scene(arch: str) -> Path:
    """The default generate-mpm scene, generated once into bench_out/scene_default."""
    if (DEFAULT_SCENE / "scene.json").exists():
        return DEFAULT_SCENE
    from click.testing import CliRunner

    from cli import cli

    print(f"generating the default scene into {DEFAULT_SCENE} ...", flush=True)
    r = CliRunner().invoke(cli, ["--arch", arch, "generate-mpm", "--quiet", "--out", str(DEFAULT_SCENE)])
    if r.exit_code != 0:
        raise SystemExit(r.output)
    return DEFAULT_SCENE


# ----------------------------------------------------------------------------- fast preset
def fast_end_to_end(data: Path, out: Path) -> tuple[float, list]:
    """`fit --preset fast` as the CLI runs it (every stage), timed per stage; (total s, rows)."""
    from pipeline.fit import runner

    rows = []
    originals = {}

    def timed_method(name):
        method = getattr(runner.Fitter, name)
        originals[name] = method

        def inner(self, *a, **kw):
            reset_peak_rss()
            t0 = time.perf_counter()
            result = method(self, *a, **kw)
            rows.append((name.rstrip("_"), time.perf_counter() - t0, peak_rss_mb()))
            print(f"  {rows[-1][0]:<10} {rows[-1][1]:8.1f} s  {rows[-1][2]:8.0f} MB", flush=True)
            return result

        setattr(runner.Fitter, name, inner)

    from pipeline.fit.settings import make_settings

    for name in ("static", "anchors", "refine", "velocity", "global_", "dynamic"):
        timed_method(name)
    try:
        t0 = time.perf_counter()
        runner.fit(data, out, make_settings("fast"), progress=False, log=lambda *_: None)
        total = time.perf_counter() - t0
    finally:
        for name, method in originals.items():
            setattr(runner.Fitter, name, method)
    return total, rows


# ----------------------------------------------------------------------------- paper preset
def _iteration_times(stamps: list) -> list:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def static_weights(counts: list, n0: int, n1: int, total: int, schedule: tuple) -> dict:
    """{count: iterations} of the static stage. ``counts`` [[iteration, n], ...] is a real fit's
    record (stage.json: n Gaussians from that iteration on); without it the count is taken to grow
    linearly from n0 to n1 over the densification window and to stay at n1 after it (time per
    iteration being linear in the count, the ramp costs the mean of both ends)."""
    if counts:
        starts = [0] + [int(it) for it, _ in counts[1:]] + [total]
        out: dict = defaultdict(float)
        for (_it, n), a, b in zip(counts, starts, starts[1:]):
            out[int(n)] += max(0, min(b, total) - a)
        return dict(out)
    start, stop, _every = schedule
    if n0 == n1:
        return {n0: total}
    return {n0: start + 0.5 * (stop - start), n1: 0.5 * (stop - start) + (total - stop)}


def paper_stages(data: Path, n_gaussians: int, iterations: int, watch: Stopwatch, log=print,
                 static_run: Path | None = None, static_counts: list | None = None) -> dict:
    """Seconds per iteration and parts of every stage at the paper preset (module docstring);
    with ``static_run``, the number of Gaussians over the static stage and the Gaussians the later
    stages start from are those of that paper fit (RUN/stages/static)."""
    import torch

    from pipeline.data.datasets import load_dataset
    from pipeline.data.frames import FrameCache
    from pipeline.fit import anchors as anchors_stage
    from pipeline.fit import dynamic as dynamic_stage
    from pipeline.fit import global_search as global_stage
    from pipeline.fit import refine as refine_stage
    from pipeline.fit import velocity as velocity_stage
    from pipeline.fit.physics import spring_model
    from pipeline.fit.runner import image_scale, scene_facts
    from pipeline.fit.settings import make_settings
    from pipeline.fit.static import reconstruct_static
    from taichi_sim.binding import apply_binding
    from taichi_sim.spring_rollout import Integrator, SpringState, rollout

    paper = make_settings("paper")
    ds = load_dataset(data)
    facts = scene_facts(ds, paper)
    scale = image_scale(ds, paper)
    frames = FrameCache(ds, scale)
    k = max(1, iterations)
    results: dict = {}

    def measure(name, count, run):
        """run(mark) does the work, calling mark() once warm (the watch and clock restart there)
        and returning the iterations done after it; stores the stage's seconds per iteration and
        its parts."""
        watch.reset()
        clock = [0.0]

        def mark():
            watch.reset()
            clock[0] = time.perf_counter()

        with watch.patch():
            clock[0] = time.perf_counter()
            out, done = run(mark)
            elapsed = time.perf_counter() - clock[0]
        parts = {p: v / done for p, v in watch.collect().items()}
        s_it = elapsed / done
        parts = {p: parts.get(p, 0.0) for p in PARTS}
        parts["other"] = max(0.0, s_it - sum(parts.values()))
        results[name] = {"s_per_iteration": s_it, "iterations": count, "parts_s": parts}
        log(f"  {name:<10} {s_it:9.3f} s/iteration x {count:>6} = {s_it * count / 60:7.1f} min   "
            + "  ".join(f"{p} {v / s_it:4.0%}" for p, v in parts.items()))
        return out

    # static: at the initial count and at n_gaussians, no densification in the measured iterations;
    # the first iteration (kernel compilation) is left out
    n0 = paper.static(scale).n_init
    total_static = paper.static_iterations
    counts, fitted = [], None
    if static_run is not None:
        from pipeline.data.gaussians import load_ply

        info = json.loads((static_run / "stages" / "static" / "stage.json").read_text())
        counts = static_counts or info["gaussian_counts"]
        n_gaussians = max(n for _, n in counts)
        fitted = load_ply(static_run / "stages" / "static" / "gaussians.ply")
        log(f"  static: the number of Gaussians of {static_run}: {counts[0][1]} -> {n_gaussians} "
            f"(at most), {len(fitted)} after the last pruning; its stage took {info.get('seconds', 0) / 60:.1f} min")
    static_at = {}
    gaussians = None
    for n in sorted({n0, n_gaussians}):
        st = dataclasses.replace(paper.static(scale), iterations=k + 1, n_init=n, densify_from=10**9)

        def run_static(mark, st=st):
            def callback(it, _loss, _g):
                if it == 0:
                    mark()
            return reconstruct_static(ds, st, progress=False, callback=callback), k

        g = measure(f"static@{n}", paper.static_iterations, run_static)
        static_at[n] = results.pop(f"static@{n}")
        if n == n_gaussians:
            gaussians = g if fitted is None else fitted
    s0, s1 = static_at[n0]["s_per_iteration"], static_at[n_gaussians]["s_per_iteration"]
    weights = static_weights(counts, n0, n_gaussians, total_static, paper.static(scale).schedule())

    def at(n, key):  # linear in the count between the two measured ones
        lo, hi = static_at[n0], static_at[n_gaussians]
        f = 0.0 if n_gaussians == n0 else (n - n0) / (n_gaussians - n0)
        pick = (lambda s: s[key]) if key == "s_per_iteration" else (lambda s: s["parts_s"][key])
        return pick(lo) + f * (pick(hi) - pick(lo))

    results["static"] = {
        "s_per_iteration": sum(w * at(n, "s_per_iteration") for n, w in weights.items()) / total_static,
        "iterations": total_static,
        "parts_s": {p: sum(w * at(n, p) for n, w in weights.items()) / total_static for p in (*PARTS, "other")},
        "s_per_iteration_at": {str(n): v["s_per_iteration"] for n, v in static_at.items()},
    }
    log(f"  static     {results['static']['s_per_iteration']:9.3f} s/iteration over the schedule ({n0} -> "
        f"{n_gaussians} Gaussians: {s0:.3f} -> {s1:.3f} s)")

    # anchors and springs: once, not an iteration loop
    t0 = time.perf_counter()
    a = anchors_stage.run(gaussians, frames, paper.anchors())
    once = time.perf_counter() - t0
    results["anchors"] = {"s_per_iteration": once, "iterations": 1,
                          "parts_s": {**{p: 0.0 for p in PARTS}, "other": once}}
    log(f"  anchors    {once:9.3f} s once")

    means0 = apply_binding(a.binding, a.rest_positions)

    def run_refine(mark):
        mark()
        return refine_stage.run(gaussians, means0, frames, dataclasses.replace(paper.refine(), iterations=k),
                                False), k

    g2 = measure("refine", paper.refine_iterations, run_refine).gaussians
    model = spring_model(a, facts, paper.physics())
    # compile the simulation kernels (forward, backward, no-grad forward) before timing
    params = paper.physics().initial_params(model.n_anchors)
    params.log_stiffness.requires_grad_(True)
    state = SpringState(model.rest_positions, torch.zeros(3))
    rollout(model, params, state, 1, Integrator(substeps=1)).positions.sum().backward()
    with torch.no_grad():
        rollout(model, params, state, 1, Integrator(substeps=1))

    contact = facts.contact_frame if facts.contact_frame is not None else 5
    vel = dataclasses.replace(paper.velocity(int(max(2, min(contact, facts.fit_frames)))), iterations=k)

    def run_velocity(mark):
        mark()
        return velocity_stage.run(g2, model, a.binding, frames, facts.frame_dt, vel, False), k

    v0 = measure("velocity", paper.velocity_iterations, run_velocity).v0

    # global search: one "iteration" is one candidate (a forward rollout scored on its cameras): the
    # bracket's k points, the contact offsets and the region round are measured (the CMA-ES round is
    # left out) and the time is divided by the candidates actually scored; the preset's count is
    # that of global_search.run's rounds
    full = paper.global_search_settings()
    gs = dataclasses.replace(full, grid_points=max(2, k), cma_generations=0)
    n_candidates = sum(n for _, n in full.rounds())

    def run_global(mark):
        mark()
        r = global_stage.run(g2, model, a.binding, v0, frames, facts.fit_frames, facts.frame_dt, gs, False)
        return r, len(r.evaluations)

    measure("global", n_candidates, run_global)

    # dynamic: one iteration (frames 1..fit_frames-1, a step after each) at each substep count of the
    # preset's schedule (substeps_raise_every), weighted by the iterations run at it
    levels = dynamic_substep_levels(paper.dynamic())
    for n_sub in levels:
        def run_dynamic(mark, n_sub=n_sub):
            mark()
            dyn = dataclasses.replace(paper.dynamic(), iterations=1, substeps=n_sub, substeps_raise_every=0)
            return dynamic_stage.run(g2, model, a.binding, v0, frames, facts.fit_frames, facts.frame_dt, dyn,
                                     False), 1

        measure(f"dynamic@{n_sub}", levels[n_sub], run_dynamic)
    parts = [results.pop(f"dynamic@{n_sub}") for n_sub in levels]
    total_dyn = paper.iterations
    results["dynamic"] = {
        "s_per_iteration": sum(p["s_per_iteration"] * p["iterations"] for p in parts) / total_dyn,
        "iterations": total_dyn,
        "parts_s": {k: sum(p["parts_s"][k] * p["iterations"] for p in parts) / total_dyn for k in (*PARTS, "other")},
    }
    if len(levels) > 1:
        log(f"  dynamic    {results['dynamic']['s_per_iteration']:9.3f} s/iteration over the substep schedule "
            + ", ".join(f"{n} substeps x {c}" for n, c in levels.items()))
    return results


def dynamic_substep_levels(d) -> dict:
    """{substeps per frame: iterations run at it} of a dynamic stage's schedule (its
    substeps_raise_every; instability retries left out)."""
    from pipeline.fit.dynamic import SUBSTEPS_RAISE, raises_substeps

    out: dict = defaultdict(int)
    n = d.substeps
    for it in range(d.iterations):
        if raises_substeps(d, it):
            n = min(n + SUBSTEPS_RAISE, d.max_substeps)
        out[n] += 1
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fast", choices=["fast", "paper"])
    ap.add_argument("--data", default=None, help="dataset (default: bench_out/scene_default, generated once)")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    ap.add_argument("--arch", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--gaussians", type=int, default=200000,
                    help="Gaussians the static stage ends with (paper preset; default its cap)")
    ap.add_argument("--iterations", type=int, default=2, help="iterations measured per stage (paper preset)")
    ap.add_argument("--static-counts", type=Path, default=None, metavar="JSON",
                    help="with --static-from: the record of the number of Gaussians ([[iteration, count], ...]) "
                         "to use instead of RUN's (for a run whose static stage was resumed from a checkpoint "
                         "written before the record was kept)")
    ap.add_argument("--static-from", type=Path, default=None, metavar="RUN",
                    help="paper preset: a paper fit of the same data whose static stage gives the number "
                         "of Gaussians over the static stage and the Gaussians of the later stages "
                         "(replaces --gaussians)")
    ap.add_argument("--skip-fast", action="store_true", help="paper preset: do not run the fast preset end to end")
    args = ap.parse_args()

    import torch

    from taichi_sim.runtime import init_taichi

    arch = init_taichi(args.arch, "f32")
    data = Path(args.data) if args.data else default_scene(arch)
    tmp = Path(tempfile.mkdtemp(prefix="sgaus_bench_fit_"))
    report: dict = {"arch": arch, "threads": torch.get_num_threads(), "data": str(data)}

    if args.preset == "paper":
        print(f"paper preset, stage by stage on {data} "
              f"({args.static_from or f'{args.gaussians} Gaussians'}, arch {arch}):", flush=True)
        counts = json.loads(args.static_counts.read_text()) if args.static_counts else None
        stages = paper_stages(data, args.gaussians, args.iterations, Stopwatch(), static_run=args.static_from,
                              static_counts=counts)
        total = sum(s["s_per_iteration"] * s["iterations"] for s in stages.values())
        report["stage_s_per_iteration"] = {name: s["s_per_iteration"] for name, s in stages.items()}
        report["stage_iterations"] = {name: s["iterations"] for name, s in stages.items()}
        report["stage_parts_s_per_iteration"] = {name: s["parts_s"] for name, s in stages.items()}
        report["static_s_per_iteration_at"] = stages["static"]["s_per_iteration_at"]
        report["paper_total_s_estimate"] = total
        report["gaussians"] = max(int(n) for n in stages["static"]["s_per_iteration_at"])
        print()
        print("| stage | s / iteration | iterations | total min | " + " | ".join(PARTS) + " | other |")
        print("|---|---|---|---|" + "---|" * (len(PARTS) + 1))
        for name, s in stages.items():
            it = s["s_per_iteration"]
            shares = " | ".join(f"{s['parts_s'][p] / it:.0%}" if it > 0 else "-" for p in (*PARTS, "other"))
            print(f"| {name} | {it:.3f} | {s['iterations']} | {it * s['iterations'] / 60:.1f} | {shares} |")
        print(f"| **paper preset, estimated** | | | **{total / 60:.1f}** |" + " |" * (len(PARTS) + 1))

    if args.preset == "fast" or not args.skip_fast:
        print(f"fit --preset fast on {data} (arch {arch}):", flush=True)
        fast_total, rows = fast_end_to_end(data, tmp / "run_fast")
        report["fast_total_s"] = fast_total
        report["fast_stages"] = {label: {"wall_s": s, "peak_rss_mb": mb} for label, s, mb in rows}
        print()
        print("| stage | wall s | peak RSS MB |")
        print("|---|---|---|")
        for label, s, mb in rows:
            print(f"| {label} | {s:.1f} | {mb:.0f} |")
        print(f"| **fast preset total** | {fast_total:.1f} | {max(r[2] for r in rows):.0f} |")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
