"""`sgaus fit`: from a multi-view video to a simulatable asset (paper Sec. 4).

Stages, each saved under RUN/stages/<name>/ and keyed by a hash of its parent's key and of the
whole stage-settings dataclass (so a setting cannot be forgotten in a key), so ``resume=True``
continues an interrupted fit and never reuses stale work. A running stage also saves its state
every ``checkpoint_s`` seconds (RUN/stages/<name>.checkpoint, keyed like the stage, removed once
the stage's output is written; pipeline/fit/checkpoint.py), which ``resume=True`` continues from.
Every stage hands the next one what it saved, read back from disk, whether it ran now or was
reused, and the fit runs PyTorch's deterministic kernels: a fit killed at any point and resumed
ends bitwise where an uninterrupted one does (on the CPU):

1. static    3D Gaussians fitted to frame 0 of every view (Sec. 4.1; pipeline/fit/static.py)
2. anchors   N_A anchors through the object's volume, k-nearest springs, binding (Eq. 4-6, 15)
3. refine    Gaussians at their bound positions; colour, opacity, per-Gaussian scale refined
4. velocity  the initial velocity v0, fitted on the frames before the first ground contact
5. dynamic   per-anchor stiffness, soft-vector kappa and ground friction through the
             differentiable spring-mass simulation (Eq. 18)

The result is assembled into RUN/asset/ (pipeline/asset.py), with RUN/settings.yaml and RUN/loss.png.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.asset import Asset, save_asset
from pipeline.data.anchors import load_anchors, save_anchors
from pipeline.data.datasets import VideoDataset, frame0_views, load_dataset
from pipeline.data.files import atomic_file, write_json
from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import load_ply, save_ply
from pipeline.data.rundir import RunDir, hash_files, hash_key
from pipeline.data.runlock import describe as describe_lock
from pipeline.fit import anchors as anchors_stage
from pipeline.fit import dynamic as dynamic_stage
from pipeline.fit import global_search as global_stage
from pipeline.fit import refine as refine_stage
from pipeline.fit import velocity as velocity_stage
from pipeline.fit.checkpoint import Checkpoint
from pipeline.fit.geometry import detect_contact_frame
from pipeline.fit.physics import SceneFacts, spring_model
from pipeline.fit.static import reconstruct_static
from pipeline.fit.settings import FitSettings, save_settings
from taichi_sim.binding import apply_binding
from taichi_sim.errors import SgausError
from taichi_sim.spring_model import vec3
from taichi_sim.spring_rollout import Integrator


def stage_key(name: str, parent: str, settings) -> str:
    """The cache key of a stage: its name, its parent's key and every field of its settings."""
    return hash_key(name, parent, dataclasses.asdict(settings))


def scene_facts(ds: VideoDataset, settings: FitSettings, gravity=None, ground=None) -> SceneFacts:
    scene = ds.scene
    if gravity is None and scene is not None:
        gravity = scene.gravity
    if gravity is None:
        raise SgausError(f"{ds.root}: gravity is unknown (no scene.json): give --gravity x,y,z")
    gravity = vec3(gravity, "gravity")
    if ground is None and scene is not None and scene.ground_point is not None:
        ground = (scene.ground_point, scene.ground_normal)
    if ground is None:
        raise SgausError(f"{ds.root}: the ground plane is unknown (no scene.json): give --ground x,y,z,nx,ny,nz")
    ground_point, ground_normal = vec3(ground[0], "ground point"), vec3(ground[1], "ground normal")
    n = np.linalg.norm(ground_normal)
    if n == 0:
        raise SgausError("the ground normal must not be zero")
    ground_normal = tuple(float(c) / n for c in ground_normal)
    frame_dt = ds.frame_dt
    if not frame_dt or frame_dt <= 0:
        raise SgausError(f"{ds.root}: the frame time step is unknown (no 'time' in the dataset)")
    fit_frames = settings.fit_frames or (scene.fit_frames if scene is not None else 0) or min(20, ds.n_frames)
    if fit_frames < 2 or fit_frames > ds.n_frames:
        raise SgausError(f"cannot fit {fit_frames} frames of a video with {ds.n_frames} frames (need 2 or more)")
    contact = scene.contact_frame if scene is not None else None
    return SceneFacts(gravity, ground_point, ground_normal, float(frame_dt), int(fit_frames), contact, ds.n_frames)


def image_scale(ds: VideoDataset, settings: FitSettings) -> float:
    side = max(ds.cameras.width, ds.cameras.height)
    return 1.0 if settings.image_size <= 0 or settings.image_size >= side else settings.image_size / side


def open_fit_run(out, resume: bool, overwrite: bool, protect, log) -> RunDir:
    """The run directory a fit writes, its writer lock taken (pipeline/data/runlock.py): a second
    writer is refused; the stale lock of a killed one is taken over, and that is said."""
    run = RunDir(out, resume=resume, overwrite=overwrite, protect=protect, writer=True, lock="sgaus fit")
    if run.lock.taken_over:
        log(f"took over the lock of {run.lock.root}: its holder, {describe_lock(run.lock.taken_over)}, "
            "is no longer running")
    return run


def stage_checkpoint(run: RunDir, name: str, key: str, settings: FitSettings, log) -> Checkpoint:
    """The checkpoint of stage ``name`` run with ``key`` (RUN/stages/<name>.checkpoint, beside its
    output directory); a fit from scratch discards any an earlier fit left."""
    c = Checkpoint(run.root / "stages" / f"{name}.checkpoint", name, key, settings.checkpoints(),
                   resume=run.resume, log=log)
    if not run.resume:
        c.discard()
    return c


def cached_stage(run: RunDir, name: str, key: str, settings: FitSettings, log, ran: list, compute, save, load):
    """Stage ``name``'s saved output, read back (computed first unless ``key`` matches): the next
    stage starts from the same values whether this one ran now or in a killed process.
    ``compute(checkpoint)`` returns (value, info); the stage.json holds info and the wall time, and
    ``ran`` gains the name of a stage computed now."""
    if not run.cached(name, key):
        t0, c = time.perf_counter(), stage_checkpoint(run, name, key, settings, log)
        value, info = compute(c)
        with run.write_stage(name, key, {**info, "seconds": round(time.perf_counter() - t0, 2)}) as d:
            save(value, d)
        c.discard()
        ran.append(name)
    return load(run.stage_dir(name))


class Fitter:
    """Runs (or reuses, with ``resume``) the stages of one fit into the run directory ``out``."""

    def __init__(self, data, out, settings: FitSettings, resume: bool = False, gravity=None, ground=None,
                 progress: bool = True, log=print, overwrite: bool = False):
        self.ds = load_dataset(data)
        self.settings = settings
        self.facts = scene_facts(self.ds, settings, gravity, ground)
        self.run = open_fit_run(out, resume, overwrite, [self.ds.root], log)
        try:
            self.scale = image_scale(self.ds, settings)
            self.frames = FrameCache(self.ds, self.scale)
            # the object's shape (static Gaussians, anchors, refine) comes from every view of frame 0:
            # the videos' and any static photos'
            self.shape_ds = frame0_views(self.ds)
            self.shape_frames = self.frames if self.shape_ds is self.ds else FrameCache(self.shape_ds, self.scale)
            self.progress, self.log = progress, log
            self.ran: list[str] = []
            self.run.update_meta(data=str(Path(data).resolve()), facts=dataclasses.asdict(self.facts),
                                 status="fitting")
            data_key = hash_files(p for p in self.ds.root.rglob('*') if p.is_file() and not p.name.startswith('.'))
            self.root_key = hash_key("data", data_key, dataclasses.asdict(self.facts))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give back the run's writer lock (the end of the process does too)."""
        self.run.release()

    def stage(self, name: str, key: str, compute, save, load):
        """:func:`cached_stage` in this fit's run."""
        return cached_stage(self.run, name, key, self.settings, self.log, self.ran, compute, save, load)

    # Each stage returns what it saved, read back, also when it has just computed it: the next stage
    # must start from the same values whether this one ran now or in an earlier (killed) process, and
    # a saved file need not hold the last bits of what was in memory (a PLY stores the colours as
    # float32 spherical-harmonic coefficients).
    def static(self):
        settings = self.settings.static(self.scale)
        key = stage_key("static", self.root_key, settings)

        def compute(c):
            extra = len(self.shape_ds.cameras) - len(self.ds.cameras)
            self.log("stage 1/5: static reconstruction of frame 0" + (f" (and {extra} static photos)" if extra else ""))
            counts = []
            g = reconstruct_static(self.shape_ds, settings, progress=self.progress, checkpoint=c, counts=counts)
            return g, {"gaussians": len(g), "gaussian_counts": counts}

        return self.stage("static", key, compute, lambda g, d: save_ply(d / "gaussians.ply", g),
                          lambda d: load_ply(d / "gaussians.ply")), key

    def anchors(self, g, parent: str):
        settings = self.settings.anchors()
        key = stage_key("anchors", parent, settings)

        def compute(_c):  # quick: no checkpoint
            self.log(f"stage 2/5: {settings.n_anchors} anchors through the volume, {settings.k_neighbors} springs each")
            a = anchors_stage.run(g, self.shape_frames, settings, up=self.facts.ground_normal)
            return a, {"anchors": len(a.rest_positions)}

        return self.stage("anchors", key, compute, lambda a, d: save_anchors(a, d / "anchors.npz"),
                          lambda d: load_anchors(d / "anchors.npz", len(g))), key

    def refine(self, g, a, parent: str):
        settings = self.settings.refine()
        key = stage_key("refine", parent, settings)

        def compute(c):
            self.log("stage 3/5: refining the Gaussians at their bound positions" if settings.iterations else
                     "stage 3/5: refine skipped (refine_iterations=0): the Gaussians only move to their bound "
                     "positions")
            r = refine_stage.run(g, apply_binding(a.binding, a.rest_positions), self.shape_frames, settings,
                                 self.progress, checkpoint=c)
            return r.gaussians, {"losses": r.losses}

        return self.stage("refine", key, compute, lambda g2, d: save_ply(d / "gaussians.ply", g2),
                          lambda d: load_ply(d / "gaussians.ply")), key

    def velocity_frames(self, g) -> int:
        if self.settings.velocity_frames:
            n = self.settings.velocity_frames
        else:
            n = self.facts.contact_frame
            if n is None:
                n = detect_contact_frame(self.frames, self.facts.ground_point, self.facts.ground_normal,
                                         self.facts.n_frames, g)
                self.log(f"first ground contact detected at frame {n}")
        return int(max(2, min(n, self.facts.fit_frames)))

    def velocity(self, g, model, a, parent: str):
        settings = self.settings.velocity(self.velocity_frames(g))
        key = stage_key("velocity", parent, settings)

        def compute(c):
            self.log(f"stage 4/5: initial velocity from frames 0..{settings.frames - 1}")
            r = velocity_stage.run(g, model, a.binding, self.frames, self.facts.frame_dt, settings, self.progress,
                                   checkpoint=c)
            return r, {}

        def save(r, d):
            write_json(d / "velocity.json", {"v0": r.v0.tolist(), "frames": r.frames, "losses": r.losses})

        return self.stage("velocity", key, compute, save,
                          lambda d: velocity_stage.load_v0(d / "velocity.json")), key

    def global_(self, g, model, a, v0, parent: str):
        settings = self.settings.global_search_settings()
        key = stage_key("global", parent, settings)

        def compute(c):
            lo, hi = settings.log_k_range
            bounce = ", the ground's restitution" if model.penalty_ground else ""
            bounce += ", the springs' damping" if settings.search_zeta0 else ""
            self.log(f"stage 5/6: global search of log10 k in {lo:g}..{hi:g}, friction, kappa{bounce} and the contact "
                     f"offset (rollouts: {', '.join(what for what, _ in settings.rounds())})")
            r = global_stage.run(g, model, a.binding, v0, self.frames, self.facts.fit_frames, self.facts.frame_dt,
                                 settings, self.progress, checkpoint=c, horizon=self.facts.n_frames)
            if r.passed_over:
                ks = ", ".join(f"{e['log_k']:.2f}" for e in r.passed_over)
                self.log(f"global search: {len(r.passed_over)} better-scored candidate(s) blew up within the video's "
                         f"{self.facts.n_frames} frames (log10 k {ks}); took log10 k "
                         f"{float(r.params.log_stiffness.mean()):.2f}")
            return r, {}

        return self.stage("global", key, compute, lambda r, d: global_stage.save(r, d), global_stage.load), key

    def dynamic(self, g, model, a, v0, parent: str, start=None, min_substeps: int = 0):
        settings = self.settings.dynamic()
        key = stage_key("dynamic", parent, settings)
        start_key = stage_key("dynamic", parent, dataclasses.replace(settings, start_offsets=(0.0,)))
        n_fit, frame_dt = self.facts.fit_frames, self.facts.frame_dt
        if start is None:
            start = settings.physics.initial_params(model.n_anchors)

        def fit(from_, c, desc):
            return dynamic_stage.run(g, model, a.binding, v0, self.frames, n_fit, frame_dt, settings, self.progress,
                                     desc=desc, start=from_, checkpoint=c, min_substeps=min_substeps)

        def score(r):
            integrator = Integrator(frame_dt=frame_dt, substeps=r.substeps, max_substeps=settings.max_substeps)
            return dynamic_stage.score(g, model, a.binding, v0, self.frames, n_fit, integrator, r.params,
                                       settings.lambda_dssim)

        label = "single k" if settings.single_k else "per-anchor k"
        stage_no = "6/6" if self.settings.global_search else "5/5"
        header = f"stage {stage_no}: stiffness ({label}), soft vector and friction on frames 0..{n_fit - 1}"
        return dynamic_stage.from_starts(self.stage, key, start_key, settings.start_offsets, start, fit, score,
                                         self.log, header), key

    def make_asset(self, g, model, a, v0, r: dynamic_stage.Dynamic) -> Asset:
        s = self.settings
        return Asset(
            gaussians=g, model=model, binding=a.binding, params=r.params.to(torch.float32), v0=v0.float(),
            integrator=Integrator(frame_dt=self.facts.frame_dt, substeps=r.substeps, max_substeps=s.max_substeps),
            info={"data": str(self.ds.root.resolve()), "fit_frames": self.facts.fit_frames,
                  "n_frames": self.facts.n_frames, "image_scale": self.scale,
                  "single_k": s.single_k, "soft_vector": s.soft_vector},
        )


@contextlib.contextmanager
def deterministic():
    """PyTorch's deterministic kernels while the block runs. On the CPU the gradient of a gather
    (``positions[index]``, as the binding does) is otherwise summed with parallel atomic adds, so
    its last bits, and after a few Adam steps the fitted v0 and stiffness (by up to 1e-4), varied
    from run to run. ``warn_only``: an op without a deterministic kernel (on a GPU) warns instead
    of failing the fit."""
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def fit(data, out, settings: FitSettings, resume: bool = False, gravity=None, ground=None,
        progress: bool = True, log=print, overwrite: bool = False) -> Path:
    """Run every stage (reusing matching ones with ``resume``, continuing a stage from its
    checkpoint) and write RUN/asset. The run is marked "fitting" until the asset is written, then
    "complete"; the evaluations of an earlier asset (RUN/eval, RUN/eval_counterfactual) are removed
    when a new asset replaces it. Last, RUN/report.html (pipeline.report) is written for the
    finished run. The fit holds the run's lock (pipeline/data/runlock.py) throughout: a second
    writer of the run is refused."""
    with deterministic():
        f = Fitter(data, out, settings, resume, gravity, ground, progress, log, overwrite)
        try:
            return _stages(f, data, settings, log)
        finally:
            f.close()


def _stages(f: Fitter, data, settings: FitSettings, log) -> Path:
    g, k1 = f.static()
    a, k2 = f.anchors(g, k1)
    g2, k3 = f.refine(g, a, k2)
    model = spring_model(a, f.facts, settings.physics())
    v0, k4 = f.velocity(g2, model, a, k3)
    start, min_substeps = None, 0
    if settings.global_search:
        found, k4 = f.global_(g2, model, a, v0, k4)
        start, min_substeps = found.params, found.substeps
        model = global_stage.placed(model, found.contact_offset, found.restitution, found.zeta0)
    r, _ = f.dynamic(g2, model, a, v0, k4, start, min_substeps)
    save_settings(f.run.root / "settings.yaml", settings, {"data": str(Path(data).resolve())})
    save_asset(f.run.root / "asset", f.make_asset(g2, model, a, v0, r))
    write_loss_plot(f.run)
    for stale in ("eval", "eval_counterfactual"):  # computed from the asset just replaced
        if f.ran and (f.run.root / stale).exists():
            shutil.rmtree(f.run.root / stale)
    f.run.update_meta(stages_run=f.ran, status="complete")
    from pipeline.report import report_run

    log(f"report: {report_run(f.run.root)}")
    return f.run.root


def write_loss_plot(run: RunDir) -> Path:
    """RUN/loss.png: the loss of every optimisation stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for name, fname in [("refine", "stage.json"), ("velocity", "velocity.json"), ("global", "global.json"),
                        ("dynamic", "fitted.json")]:
        p = run.stage_dir(name) / fname
        if p.exists():
            doc = json.loads(p.read_text())
            if doc.get("losses") or doc.get("evaluations"):
                curves.append((name, doc))
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(4 * max(1, len(curves)), 3), squeeze=False)
    for ax, (name, doc) in zip(axes[0], curves):
        if name == "global":  # every candidate's score against its log10 k; the chosen one marked
            ev = [e for e in doc["evaluations"] if e["loss"] is not None]
            ax.scatter([e["log_k"] for e in ev], [e["loss"] for e in ev], s=10, alpha=0.6)
            ax.scatter([doc["log_k"]], [doc["loss"]], s=60, marker="*", color="red", zorder=3,
                       label=f"log10 k {doc['log_k']:.2f}, friction logit {doc['friction_logit']:.2f}, "
                             f"kappa {doc['kappa']:.2f}" + ("" if doc.get("restitution") is None else
                                                           f", restitution {doc['restitution']:.2f}")
                             + ("" if doc.get("zeta0") is None else f", zeta0 {doc['zeta0']:.3g}"))
            ax.legend(fontsize=6)
            ax.set_xlabel("log10 k of the candidate")
        elif doc.get("starts"):  # a multi-start dynamic stage: every start's curve, the kept one bold
            for i, start in enumerate(doc["starts"]):
                p = run.stage_dir(f"dynamic_start{i}") / "fitted.json"
                losses = json.loads(p.read_text())["losses"] if p.exists() else []
                ax.plot(np.arange(1, len(losses) + 1), losses, lw=2.5 if start["chosen"] else 1.0,
                        label=f"from log10 k {start['start_log_k']:.2f}: {start['mean_log_k']:.2f}, "
                              + ("blew up" if start["score"] is None else f"score {start['score']:.4f}")
                              + (" (kept)" if start["chosen"] else ""))
            ax.legend(fontsize=6)
            ax.set_xlabel("iteration")
        else:
            ax.plot(np.arange(1, len(doc["losses"]) + 1), doc["losses"])
            ax.set_xlabel("iteration")
        ax.set_title(name)
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run.root / "loss.png"
    with atomic_file(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out
