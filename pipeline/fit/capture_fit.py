"""`sgaus fit CAPTURE`: a real capture (pipeline.data.capture) to a simulatable asset.

The capture is first prepared into RUN/capture/ (undistorted, resized, synchronised; a static
one-frame dataset and a dynamic video dataset, pipeline.data.capture.prepare_capture). Then, each
stage saved under RUN/stages/<name>/ and keyed like `sgaus fit`'s (pipeline.fit.runner):

1. static        isotropic Gaussians fitted to the static capture's many views, in its own
                 (COLMAP) frame; ``static_scale`` is read for an object of 0.4 units and scaled by
                 the object's extent there (the visual hull of the static masks). With
                 ``--static-ply`` a 3DGS the user trained replaces it (pipeline.data.splat_import).
2. anchors       anchors, springs and binding in the static frame, from the static views (their
                 visual hull is tight; three dynamic views would leave it loose).
3. refine        the Gaussians at their bound positions, refined on the static views.
4. registration  the similarity static -> dynamic frame on the dynamic views' frame-0 masks
                 (pipeline.fit.registration; automatic initial guess), with the static stage's
                 Gaussians: their silhouettes are the static masks' (IoU 0.99 on the test capture),
                 those moved to their bound positions (refine) are thinner (IoU 0.83 there), and a
                 registration with them came out 6 % too large. RUN/registration.png shows
                 the Gaussians over the dynamic views before (the initial guess) and after; the
                 Gaussians, anchors and rest lengths are mapped by it.
5. velocity, global, dynamic
                 as `sgaus fit`'s, in the dynamic frame, on the masks (white Gaussians against the
                 silhouettes, as the authors' IMG_IS_MASK: the captures' exposures and white
                 balances never meet), the dynamic stage with the loss of Eq. 19
                 (pipeline.fit.capture_loss). RUN/ground.png shows the ground plane and gravity
                 over the first and last dynamic frames. A capture whose ground is "rest" gets
                 it here, before stage 5: the static Gaussians registered onto the last frame's
                 masks, where the object lies on the floor (pipeline.fit.registration.rest_ground;
                 saved as the stage "ground").

The asset keeps the static capture's colours; its dataset is RUN/capture/dynamic, so `sgaus eval`
and `sgaus simulate` read it like any other (mask IoU besides PSNR/SSIM; CD/EMD where the capture
has ground-truth particles).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch

from pipeline.asset import Asset, save_asset
from pipeline.data.anchors import Anchors, load_anchors, save_anchors
from pipeline.data.capture import GROUND_AT_REST, capture_summary, prepare_capture, read_capture
from pipeline.data.datasets import load_dataset
from pipeline.data.files import atomic_file, write_json
from pipeline.data.frames import FrameCache
from pipeline.data.gaussians import Gaussians, load_ply, save_ply
from pipeline.data.rundir import RunDir, hash_files, hash_key
from pipeline.data.schema import read_json
from pipeline.fit import anchors as anchors_stage
from pipeline.fit import dynamic as dynamic_stage
from pipeline.fit import global_search as global_stage
from pipeline.fit import refine as refine_stage
from pipeline.fit import velocity as velocity_stage
from pipeline.fit.capture_loss import capture_loss
from pipeline.fit.capture_settings import capture_settings
from pipeline.fit.geometry import detect_contact_frame
from pipeline.fit.physics import spring_model
from pipeline.fit.registration import RegistrationSettings, Similarity, overlay_picture, register, rest_ground
from pipeline.fit.runner import (cached_stage, deterministic, image_scale, open_fit_run, scene_facts, stage_key,
                                 write_loss_plot)
from pipeline.fit.settings import FitSettings, save_settings
from pipeline.fit.static import carve_hull, reconstruct_static, viewing_box
from taichi_sim.binding import apply_binding
from taichi_sim.errors import SgausError
from taichi_sim.spring_rollout import Integrator

REFERENCE_SIZE = 0.4  # static_scale is read for an object of this size (the generator's default)


class MaskFrames(FrameCache):
    """A FrameCache whose images are the masks: RGB = alpha (white object on black)."""

    def rgba(self, frame: int) -> torch.Tensor:
        img = super().rgba(frame)
        a = img[..., 3:4]
        return torch.cat([a.expand(*a.shape[:-1], 3), a], -1)

    def rgb(self, frame: int, cams: list[int] | None = None) -> torch.Tensor:
        a = self.alpha(frame)
        a = a if cams is None else a[cams]
        return a.expand(*a.shape[:-1], 3)


def white(g: Gaussians) -> Gaussians:
    return Gaussians(g.means, g.log_scales, torch.ones_like(g.colors), g.opacity_logits)


def map_anchors(a: Anchors, sim: Similarity) -> Anchors:
    """Anchors moved by the similarity: rest lengths scale with it, springs and binding (inverse
    distance weights, normalised) stay as they are."""
    return Anchors(sim.apply(a.rest_positions.double()).float(), a.neighbors, a.rest_length * sim.scale, a.binding)


def registration_settings(settings: FitSettings) -> RegistrationSettings:
    cs = capture_settings(settings)
    return RegistrationSettings(iterations=cs.registration_iterations, random_hypotheses=cs.registration_hypotheses,
                                seed=settings.seed)


def object_extent(frames: FrameCache, seed: int) -> float:
    """The largest side of the box around the visual hull of frame 0's masks."""
    centre, radius = viewing_box(frames.cameras)
    pts = carve_hull(frames.alpha(0), frames.cameras, centre, radius, 4000, torch.Generator().manual_seed(seed))
    return float((pts.max(0).values - pts.min(0).values).max())


def ground_picture(path: Path, frames: FrameCache, ground_point, ground_normal, gravity, last: int,
                   size: float, centre: np.ndarray) -> Path:
    """RUN/ground.png: the first and last dynamic frames of every view with the ground plane as a
    grid (lines every size / 2 around the object) and gravity as an arrow from the object's centre."""
    import imageio.v3 as iio

    n = np.asarray(ground_normal, np.float64)
    n /= np.linalg.norm(n)
    a = np.array([1.0, 0, 0]) if abs(n[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = a - n * (a @ n)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n, e1)
    foot = np.asarray(ground_point) + ((centre - np.asarray(ground_point)) @ e1) * e1 + \
        ((centre - np.asarray(ground_point)) @ e2) * e2
    cams = frames.cameras
    rows = []
    for f in (0, last):
        img = frames.rgb(f).clone()
        lines = []
        for k in np.linspace(-2, 2, 9):
            for u, v in ((e1, e2), (e2, e1)):
                lines.append((foot + k * size / 2 * u - 2 * size * v, foot + k * size / 2 * u + 2 * size * v,
                              (0.2, 0.8, 1.0)))
        g = np.asarray(gravity, np.float64)
        lines.append((centre, centre + size * g / max(np.linalg.norm(g), 1e-9), (1.0, 0.3, 0.2)))
        for p0, p1, colour in lines:
            pts = torch.tensor(np.linspace(p0, p1, 200), dtype=torch.float32)
            uv, z = cams.project(pts)
            for c in range(len(cams)):
                ok = (z[c] > 0) & (uv[c, :, 0] >= 0) & (uv[c, :, 0] < cams.width) & (uv[c, :, 1] >= 0) & \
                     (uv[c, :, 1] < cams.height)
                u_, v_ = uv[c, ok, 0].long(), uv[c, ok, 1].long()
                img[c, v_, u_] = torch.tensor(colour)
        rows.append(torch.cat(list(img), 1))
    out = (torch.cat(rows, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    with atomic_file(path, suffix=".png") as tmp:
        iio.imwrite(tmp, out)
    return path


def fit_capture(data, out, settings: FitSettings, resume: bool = False, static_ply=None, progress: bool = True,
                log=print, overwrite: bool = False) -> Path:
    """Fit a capture (module docstring); returns the run directory. Everything the capture holds is
    checked before the run directory is made. Like `sgaus fit` on a dataset (pipeline.fit.runner),
    the fit holds the run's lock, runs PyTorch's deterministic kernels, saves checkpoints inside
    its long stages (static, refine, velocity, global, dynamic) that ``resume`` continues from,
    and starts every stage from its predecessor's saved output, so that a killed and resumed fit
    ends with the same asset as an uninterrupted one."""
    from pipeline.data.splat_import import read_splat_ply

    cs = capture_settings(settings).validate()
    cap = read_capture(data, log)
    log(capture_summary(cap))
    loss = capture_loss(settings.capture_lambda_dssim, settings.capture_lambda_center,
                        settings.capture_lambda_percep, settings.vgg_weights or None, log)
    imported = read_splat_ply(static_ply) if static_ply else None
    with deterministic():
        run = open_fit_run(out, resume, overwrite, [cap.root], log)
        try:
            return _stages(cap, run, data, settings, cs, loss, imported, static_ply, progress, log)
        finally:
            run.release()


def _stages(cap, run: RunDir, data, settings: FitSettings, cs, loss, imported, static_ply, progress, log) -> Path:
    from pipeline.data.splat_import import import_splats

    reg_settings = registration_settings(settings)
    run.update_meta(data=str(cap.root.resolve()), capture=True, status="fitting")
    ran: list[str] = []

    # -- the capture, prepared
    prep = run.root / "capture"
    prep_key = hash_key("prepare", hash_files(cap.source_files()), settings.capture_image_size, cap.n_frames,
                        cap.fit_frames, cap.gravity, cap.ground_point, cap.ground_normal, cap.contact_frame)
    marker = prep / "prepared.json"
    if not (run.resume and marker.is_file() and read_json(marker, dict).get("key") == prep_key):
        log(f"preparing the capture (undistorted, longest side {settings.capture_image_size or 'as recorded'})")
        prepare_capture(cap, prep, settings.capture_image_size, progress, info={"key": prep_key})
        ran.append("prepare")
    static_ds, dyn_ds = load_dataset(prep / "static"), load_dataset(prep / "dynamic")
    facts = scene_facts(dyn_ds, settings)
    root_key = hash_key("capture", prep_key, dataclasses.asdict(facts))
    sframes = FrameCache(static_ds, image_scale(static_ds, settings))
    d_scale = image_scale(dyn_ds, settings)
    mframes = MaskFrames(dyn_ds, d_scale)

    def stage(name, key, compute, save, load):
        return cached_stage(run, name, key, settings, log, ran, compute, save, load)

    # 1. static Gaussians (static frame)
    if imported is not None:
        key = hash_key("static-ply", root_key, hash_files([static_ply]), sframes.scale)

        def compute_static(c):
            log(f"stage 1/7: static Gaussians imported from {static_ply}")
            g, report = import_splats(imported, sframes, log)
            return g, report
    else:
        ss = settings.static(sframes.scale)
        ss = dataclasses.replace(ss, scale=settings.static_scale * object_extent(sframes, settings.seed) / REFERENCE_SIZE)
        key = stage_key("static", root_key, ss)

        def compute_static(c):
            log(f"stage 1/7: static reconstruction on {len(static_ds.cameras)} static views")
            g = reconstruct_static(static_ds, ss, progress=progress, checkpoint=c)
            return g, {"gaussians": len(g), "scale": ss.scale}
    g = stage("static", key, compute_static, lambda g, d: save_ply(d / "gaussians.ply", g),
              lambda d: load_ply(d / "gaussians.ply"))
    k_static = key

    # 2. anchors, 3. refine (static frame, static views)
    akey = stage_key("anchors", k_static, settings.anchors())

    def compute_anchors(c):
        log(f"stage 2/7: {settings.n_anchors} anchors through the volume, {settings.k_neighbors} springs each")
        a = anchors_stage.run(g, sframes, settings.anchors(), up=facts.ground_normal)
        return a, {"anchors": len(a.rest_positions)}
    a = stage("anchors", akey, compute_anchors, lambda a, d: save_anchors(a, d / "anchors.npz"),
              lambda d: load_anchors(d / "anchors.npz", len(g)))
    rkey = stage_key("refine", akey, settings.refine())

    def compute_refine(c):
        log("stage 3/7: refining the Gaussians at their bound positions on the static views")
        r = refine_stage.run(g, apply_binding(a.binding, a.rest_positions), sframes, settings.refine(), progress,
                             checkpoint=c)
        return r.gaussians, {"losses": r.losses}
    g_ref = stage("refine", rkey, compute_refine, lambda g, d: save_ply(d / "gaussians.ply", g),
                  lambda d: load_ply(d / "gaussians.ply"))

    # 4. registration into the dynamic frame
    gkey = stage_key("registration", hash_key(rkey, "static-gaussians", d_scale, root_key, dataclasses.asdict(cs)),
                     reg_settings)
    masks0 = mframes.alpha(0)

    def compute_registration(c):
        log("stage 4/7: registration of the static Gaussians onto the dynamic views' frame-0 masks")
        r = register(g, mframes.cameras, masks0, reg_settings, progress, log)
        return r, {"loss": r.loss}

    def save_registration(r, d):
        write_json(d / "registration.json", {"similarity": r.similarity.to_json(), "initial": r.initial.to_json(),
                                             "loss": r.loss, "losses": r.losses, "hypotheses": r.hypotheses})
        import imageio.v3 as iio

        picture = overlay_picture(g, mframes.cameras, dyn_ds.frame(0, scale=d_scale), masks0,
                                  [("before", r.initial), ("after", r.similarity)])
        iio.imwrite(d / "registration.png", picture)

    def load_registration(d):
        doc = read_json(d / "registration.json", dict)
        return Similarity.from_json(doc["similarity"])
    sim = stage("registration", gkey, compute_registration, save_registration, load_registration)
    shutil.copyfile(run.stage_dir("registration") / "registration.png", run.root / "registration.png")
    log(f"registration: scale {sim.scale:.4g}, translation ({', '.join(f'{v:.3f}' for v in sim.translation)}); "
        f"picture: {run.root / 'registration.png'}")
    g_dyn = sim.gaussians(g_ref)
    a_dyn = map_anchors(a, sim)
    centre = a_dyn.rest_positions.double().mean(0).numpy()
    size = float((a_dyn.rest_positions.max(0).values - a_dyn.rest_positions.min(0).values).max())
    last = facts.n_frames - 1
    if cap.ground_source == GROUND_AT_REST:  # capture.json "ground": "rest": the fit finds the floor
        qkey = hash_key("rest-ground", gkey, last, facts.ground_normal)

        def compute_ground(c):
            log(f"ground: registering the static Gaussians onto frame {last}'s masks, where the object rests")
            point, r = rest_ground(g, mframes.cameras, mframes.alpha(last), facts.ground_normal, reg_settings,
                                   progress, log)
            return (point, r), {"loss": r.loss}

        def save_ground(v, d):
            write_json(d / "ground.json", {"point": v[0].tolist(), "normal": list(facts.ground_normal),
                                           "similarity_last_frame": v[1].similarity.to_json(), "loss": v[1].loss})
        point = stage("ground", qkey, compute_ground, save_ground,
                      lambda d: read_json(d / "ground.json", dict)["point"])
        facts = dataclasses.replace(facts, ground_point=tuple(float(c) for c in point))
        source = f"{GROUND_AT_REST} (frame {last}): point ({', '.join(f'{c:.3f}' for c in point)})"
    else:
        source = dyn_ds.scene.raw.get('ground_source', 'scene.json')
    ground_picture(run.root / "ground.png", FrameCache(dyn_ds, d_scale), facts.ground_point, facts.ground_normal,
                   facts.gravity, last, size, centre)
    log(f"ground: {source}; picture: {run.root / 'ground.png'}")

    # 5-7. velocity, global search, dynamic (dynamic frame, masks)
    model = spring_model(a_dyn, facts, settings.physics())
    gw = white(g_dyn)
    base = hash_key(gkey, "mapped", facts.ground_point)
    if settings.velocity_frames:
        n_vel = settings.velocity_frames
    elif facts.contact_frame is not None:
        n_vel = facts.contact_frame
    else:
        n_vel = detect_contact_frame(mframes, facts.ground_point, facts.ground_normal, facts.n_frames, g_dyn)
        log(f"first ground contact detected at frame {n_vel}")
    vs = settings.velocity(int(max(2, min(n_vel, facts.fit_frames))))
    vkey = stage_key("velocity", base, vs)

    def compute_velocity(c):
        log(f"stage 5/7: initial velocity from frames 0..{vs.frames - 1} (masks)")
        r = velocity_stage.run(gw, model, a_dyn.binding, mframes, facts.frame_dt, vs, progress, checkpoint=c)
        return r, {}
    vel = stage("velocity", vkey, compute_velocity,
                lambda r, d: write_json(d / "velocity.json", {"v0": r.v0.tolist(), "frames": r.frames,
                                                              "losses": r.losses}),
                lambda d: velocity_stage.load_v0(d / "velocity.json"))
    v0 = vel
    start, key, min_substeps = None, vkey, 0
    if settings.global_search:
        gs = settings.global_search_settings()
        if cap.ground_source == GROUND_AT_REST:  # the estimate may lie low (a soft object sags): search above it too
            gs = dataclasses.replace(gs, contact_offset_min=min(gs.contact_offset_min, -gs.contact_offset_max))
        key = stage_key("global", vkey, gs)

        def compute_global(c):
            log("stage 6/7: global search of log10 k, friction, kappa and the contact offset (masks)")
            return global_stage.run(gw, model, a_dyn.binding, v0, mframes, facts.fit_frames, facts.frame_dt, gs,
                                    progress, checkpoint=c, horizon=facts.n_frames), {}
        found = stage("global", key, compute_global, lambda r, d: global_stage.save(r, d), global_stage.load)
        start, min_substeps = found.params, found.substeps
        model = global_stage.placed(model, found.contact_offset, found.restitution, found.zeta0)  # as in runner.py
        if found.contact_offset < 0:  # an estimated floor that lay low: the search raised it
            source += f"; raised by {-found.contact_offset:.4f} by the global search"
            ground_picture(run.root / "ground.png", FrameCache(dyn_ds, d_scale), model.ground_point,
                           facts.ground_normal, facts.gravity, last, size, centre)
            log(f"ground: {source}; picture: {run.root / 'ground.png'}")
    ds_settings = dataclasses.replace(settings.dynamic(), lambda_dssim=settings.capture_lambda_dssim)
    vgg = hash_files([settings.vgg_weights]) if settings.vgg_weights else None
    dkey = hash_key(stage_key("dynamic", key, ds_settings), "eq19", dataclasses.asdict(cs), vgg)

    if start is None:
        start = ds_settings.physics.initial_params(model.n_anchors)

    def fit_dynamic(from_, c, desc):
        return dynamic_stage.run(gw, model, a_dyn.binding, v0, mframes, facts.fit_frames, facts.frame_dt,
                                 ds_settings, progress, desc=desc, start=from_, min_substeps=min_substeps,
                                 image_loss=loss, checkpoint=c)

    def score_dynamic(r):
        integrator = Integrator(frame_dt=facts.frame_dt, substeps=r.substeps, max_substeps=ds_settings.max_substeps)
        return dynamic_stage.score(gw, model, a_dyn.binding, v0, mframes, facts.fit_frames, integrator, r.params,
                                   ds_settings.lambda_dssim, image_loss=loss)

    one_start = dataclasses.replace(ds_settings, start_offsets=(0.0,))
    start_key = hash_key(stage_key("dynamic", key, one_start), "eq19", dataclasses.asdict(cs), vgg)
    r = dynamic_stage.from_starts(stage, dkey, start_key, ds_settings.start_offsets, start, fit_dynamic,
                                  score_dynamic, log, f"stage 7/7: stiffness, soft vector and friction on frames "
                                                      f"0..{facts.fit_frames - 1} (Eq. 19 on masks)")

    asset = Asset(gaussians=g_dyn, model=model, binding=a_dyn.binding, params=r.params.to(torch.float32),
                  v0=v0.float(), integrator=Integrator(frame_dt=facts.frame_dt, substeps=r.substeps,
                                                       max_substeps=settings.max_substeps),
                  info={"data": str((prep / "dynamic").resolve()), "fit_frames": facts.fit_frames,
                        "n_frames": facts.n_frames, "image_scale": d_scale, "single_k": settings.single_k,
                        "soft_vector": settings.soft_vector,
                        "capture": {"source": str(cap.root.resolve()), "layout": cap.layout,
                                    "registration": sim.to_json(), "ground": source,
                                    "loss": "Eq. 19 on masks"}})
    save_settings(run.root / "settings.yaml", settings, {"data": str(Path(data).resolve()), "capture": True})
    save_asset(run.root / "asset", asset)
    write_loss_plot(run)
    for stale in ("eval", "eval_counterfactual"):
        if ran and (run.root / stale).exists():
            shutil.rmtree(run.root / stale)
    run.update_meta(stages_run=ran, status="complete")
    return run.root

