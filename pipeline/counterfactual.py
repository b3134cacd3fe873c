"""`sgaus eval RUN --data OTHER` when OTHER is another recording of the fitted object: a
counterfactual evaluation (does the identified physics predict the object under conditions it
was not fitted on?).

OTHER shows the same object, at rest in the same pose at frame 0 up to an offset along gravity
(the drop height), under other conditions: another initial velocity, gravity, ground height or
friction (``sgaus generate-mpm --variant-of``). The asset is

1. placed on OTHER's frame 0: its rest pose is shifted along the ground normal onto OTHER's
   frame-0 surface particles (or, without ground truth, the visual hull of OTHER's frame-0 masks),
   and refused when the shapes differ: bounding-box extents more than EXTENT_TOLERANCE of the
   object's size apart, or an RMS Chamfer distance well above the asset's own on the fitted
   recording's frame 0 (CHAMFER_*); without ground truth, the anchors' extents against the hull's
   and fewer than INSIDE_HULL of the Gaussians inside the hull;
2. put under OTHER's gravity and ground plane (scene.json; the fitted ones where OTHER says
   nothing) and OTHER's frame time;
3. given an initial velocity refitted on OTHER's frames before the first ground contact with the
   velocity stage (pipeline.fit.velocity, the run's settings, the asset's own stiffness, soft
   vector and friction; nothing else is refitted). A velocity in OTHER's scene.json is not used:
   a user filming another throw would not know it; it is recorded beside the refitted one.

Then it is simulated over all of OTHER's frames and compared with them (CD, EMD against the
surface particles, PSNR, SSIM; the mean over frames 1..n-1: none of them was fitted, so there is
no reconstruction/future split). Baselines: "hold" (the object frozen at OTHER's first frame),
"single k" (the run's cached single-k refit, placed and refitted alike; skipped, and said so,
when the run has none) and the asset with every stiffness scaled by 10 and by 0.1 (do the
identified stiffnesses matter?). Written atomically to RUN/eval_counterfactual/<OTHER's name>/
(metrics.json, metrics.md, per_frame.json, video_<camera>.mp4); RUN/eval is never touched.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from pipeline import metrics
from pipeline.asset import Asset
from pipeline.data.datasets import VideoDataset, load_dataset
from pipeline.data.files import atomic_dir, write_json, write_text
from pipeline.data.frames import FrameCache
from pipeline.data.rundir import RunDir, hash_files
from pipeline.data.scene import SceneInfo, has_particles, load_particles, particles_path, read_scene
from pipeline.evaluate import (fit_settings, fmt_metric, frame_metrics, load_ground_truth, mean_metric,
                               side_by_side_video, single_k_asset)
from pipeline.simulate import simulate_asset
from taichi_sim.errors import SgausError

EXTENT_TOLERANCE = 0.10  # bounding-box extents may differ by this fraction of the object's size
# the RMS Chamfer distance (the square root of the mean of both directions' squared distances) of
# the placed asset to OTHER's frame 0 may exceed its own on the fitted recording's frame 0 (how
# well the fit matched its rest pose) by CHAMFER_FACTOR plus CHAMFER_SLACK of the object's size;
# CHAMFER_FALLBACK of the size when the fitted recording's frame-0 particles are not available
CHAMFER_FACTOR, CHAMFER_SLACK, CHAMFER_FALLBACK = 1.25, 0.02, 0.10
INSIDE_HULL = 0.9  # without ground truth: the fraction of Gaussians inside OTHER's frame-0 visual hull
STIFFNESS_SCALES = {"stiffness_x10": 10.0, "stiffness_x0.1": 0.1}
LABELS = {"spring_gaus": "Spring-Gaus (sgaus)", "hold": "hold (frozen at frame 0)", "single_k": "Spring-Gaus, single k",
          "stiffness_x10": "stiffness x10", "stiffness_x0.1": "stiffness x0.1"}
KEYS = ("cd", "emd", "psnr", "ssim")


def is_other_recording(asset: Asset, data) -> bool:
    """Whether ``data`` is another recording than the one the asset was fitted on: another path
    whose scene.json differs (a copy of the fitted dataset is evaluated plainly, and so is an asset
    that does not record its dataset)."""
    fitted = asset.info.get("data")
    if not fitted or Path(data).resolve() == Path(fitted).resolve():
        return False
    mine = read_scene(fitted) if (Path(fitted) / "scene.json").is_file() else None
    theirs = read_scene(data) if (Path(data) / "scene.json").is_file() else None
    # a copy of the fitted recording (same scene.json) is the fitted recording
    return not (mine is not None and theirs is not None and mine.raw == theirs.raw)


# ------------------------------------------------------------------ conditions
def _conditions(scene: SceneInfo | None) -> dict:
    """The conditions of a recording that its scene.json states: gravity, ground height and
    normal, ground mode and friction coefficient, initial velocity, drop height, frame time."""
    if scene is None:
        return {}
    raw, out = scene.raw, {}
    if scene.gravity is not None:
        out["gravity"] = [float(c) for c in scene.gravity]
    if scene.ground_point is not None:
        n = np.asarray(scene.ground_normal, dtype=np.float64)
        n = n / np.linalg.norm(n)
        out["ground_height"] = float(np.dot(scene.ground_point, n))
        out["ground_normal"] = [float(c) for c in n]
        ground = raw.get("ground", {})
        if isinstance(ground.get("mode"), str):
            out["ground_mode"] = ground["mode"]
        if isinstance(ground.get("friction"), (int, float)):
            out["friction"] = float(ground["friction"])
    v = raw.get("velocity")
    if isinstance(v, list) and len(v) == 3 and all(isinstance(c, (int, float)) and math.isfinite(c) for c in v):
        out["velocity"] = [float(c) for c in v]
    options = raw.get("options")
    if isinstance(options, dict) and isinstance(options.get("drop_height"), (int, float)):
        out["drop_height"] = float(options["drop_height"])
    if scene.frame_dt is not None:
        out["frame_dt"] = float(scene.frame_dt)
    return out


def _changed(fitted: dict, other: dict) -> list[str]:
    """Conditions both recordings state and that differ."""
    def differs(a, b):
        if isinstance(a, list) or isinstance(b, list):
            return len(a) != len(b) or any(abs(x - y) > 1e-9 for x, y in zip(a, b))
        if isinstance(a, str) or isinstance(b, str):
            return a != b
        return abs(a - b) > 1e-9

    return [k for k in other if k in fitted and differs(fitted[k], other[k])]


NAMES = {"gravity": ("gravity", "m/s^2"), "ground_height": ("ground height", "m"), "ground_normal": ("ground normal", ""),
         "ground_mode": ("ground contact", ""), "friction": ("ground friction coefficient", ""),
         "velocity": ("initial velocity", "m/s"), "drop_height": ("drop height", "m"), "frame_dt": ("frame time", "s")}


def _show(v) -> str:
    if isinstance(v, list):
        return "(" + ", ".join(f"{c:g}" for c in v) + ")"
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_changes(changed: list[str], fitted: dict, other: dict) -> str:
    """'initial velocity (0, 0, 0) -> (0.4, 0, 0) m/s; ...'"""
    parts = []
    for k in changed:
        name, unit = NAMES.get(k, (k, ""))
        parts.append(f"{name} {_show(fitted[k])} -> {_show(other[k])}{' ' + unit if unit else ''}")
    return "; ".join(parts)


# ------------------------------------------------------------------ rest pose
def _robust_extent(p: np.ndarray) -> np.ndarray:
    """Per-axis extent between the 1st and 99th percentiles (a few stray Gaussians do not count)."""
    lo, hi = np.percentile(p, [1, 99], axis=0)
    return hi - lo


def _align_along(src: np.ndarray, ref: np.ndarray, n: np.ndarray) -> float:
    """The offset t along the unit vector n that brings src + t n onto ref: the difference of the
    centroids along n, refined by a one-dimensional ICP (the median residual along n of every
    point's nearest reference point), which is robust to parts of the surface the static stage
    saw less of (the underside)."""
    t = float((ref.mean(0) - src.mean(0)) @ n)
    tree = cKDTree(ref)
    for _ in range(30):
        moved = src + t * n
        _d, idx = tree.query(moved)
        step = float(np.median((ref[idx] - moved) @ n))
        t += step
        if abs(step) < 1e-7:
            break
    return t


def _hull_points(frames: FrameCache, centres: np.ndarray, n: np.ndarray, ground_point, resolution: int = 48):
    """Points of a grid inside the visual hull of frame 0's masks and the grid's step: a coarse
    pass over a box around the asset stretched along the normal from the ground (or two sizes
    below) to three sizes above it finds the hull, a fine pass of ``resolution`` steps covers it."""
    from pipeline.fit.geometry import grid_points, inside_visual_hull

    size = float(np.max(centres.max(0) - centres.min(0)))
    heights = centres @ n
    low = float(np.dot(ground_point, n)) if ground_point is not None else float(heights.min()) - 2 * size
    ends = [centres.min(0) - 0.5 * size, centres.max(0) + 0.5 * size]
    ends += [c + (h - c @ n) * n for c in list(ends) for h in (low, float(heights.max()) + 3 * size)]
    lo, hi = np.min(ends, 0), np.max(ends, 0)
    pts, step = np.zeros((0, 3)), 0.0
    for _ in range(2):
        step = float(np.max(hi - lo)) / resolution
        grid = grid_points(torch.tensor(lo), torch.tensor(hi), step).float()
        pts = grid[inside_visual_hull(grid, frames.alpha(0), frames.cameras)].double().numpy()
        if len(pts) == 0:
            break
        lo, hi = pts.min(0) - 2 * step, pts.max(0) + 2 * step
    return pts, step


def _rms_chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """The square root of the Chamfer distance (m)."""
    return math.sqrt(metrics.chamfer_distance(a, b) / metrics.CD_UNITS_PER_M2)


def match_rest_pose(asset: Asset, ds: VideoDataset, frames: FrameCache, normal, ground_point, label: str,
                    fitted_root: Path | None = None) -> dict:
    """The offset along ``normal`` that puts the asset's rest pose on OTHER's frame 0, and how well
    the shapes agree there; SgausError (one line) when they differ (another object or rest pose)."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    g = asset.gaussians
    keep = (g.opacities() > 0.05).numpy()
    centres = g.means.detach().double().numpy()[keep if keep.sum() >= 8 else slice(None)]
    if has_particles(ds.root):
        ref = load_particles(ds.root, 0).astype(np.float64)  # the surface particles
        t = _align_along(centres, ref, n)
        moved = centres + t * n
        size = float(np.max(ref.max(0) - ref.min(0)))
        extent_gap = float(np.max(np.abs(_robust_extent(moved) - _robust_extent(ref)))) / size
        rms = _rms_chamfer(moved, ref)
        own = None
        if fitted_root is not None and particles_path(fitted_root, 0).is_file():
            ref0 = load_particles(fitted_root, 0).astype(np.float64)
            own = _rms_chamfer(centres + _align_along(centres, ref0, n) * n, ref0)
        limit = CHAMFER_FACTOR * own + CHAMFER_SLACK * size if own is not None else CHAMFER_FALLBACK * size
        out = {"reference": "frame-0 surface particles", "shift": t, "object_size": size,
               "extent_difference": extent_gap, "chamfer_rms": rms, "chamfer_rms_fitted": own, "chamfer_rms_limit": limit}
        problems = []
        if extent_gap > EXTENT_TOLERANCE:
            problems.append(f"bounding-box extents differ by {100 * extent_gap:.0f} % of its size "
                            f"(asset {_show([round(float(x), 3) for x in _robust_extent(moved)])} m, {label} "
                            f"{_show([round(float(x), 3) for x in _robust_extent(ref)])} m; at most "
                            f"{100 * EXTENT_TOLERANCE:.0f} %)")
        if rms > limit:
            problems.append(f"the RMS Chamfer distance is {1000 * rms:.1f} mm" +
                            (f" against {1000 * own:.1f} mm on the fitted recording's frame 0" if own is not None else "")
                            + f" (at most {1000 * limit:.1f} mm)")
    else:
        ref, step = _hull_points(frames, centres, n, ground_point)
        if len(ref) < 8:
            raise SgausError(f"{label}: the visual hull of frame 0 is empty near the asset; it does not show the "
                             "fitted object")
        anchors = asset.model.rest_positions.double().numpy()  # volume samples, like the hull's points
        t = _align_along(anchors, ref, n)
        moved = centres + t * n
        size = float(np.max(anchors.max(0) - anchors.min(0)))
        # the hull is the object's outer bound, carved at a voxel resolution: two voxels of slack
        gap = np.abs(_robust_extent(anchors) - _robust_extent(ref)) - 2 * step
        extent_gap = float(max(0.0, np.max(gap))) / size
        inside = float(_inside(frames, moved).mean())
        out = {"reference": "frame-0 visual hull", "shift": t, "object_size": size, "extent_difference": extent_gap,
               "inside_hull": inside}
        problems = []
        if extent_gap > EXTENT_TOLERANCE:
            problems.append(f"bounding-box extents differ by {100 * extent_gap:.0f} % of its size (at most "
                            f"{100 * EXTENT_TOLERANCE:.0f} %)")
        if inside < INSIDE_HULL:
            problems.append(f"only {100 * inside:.0f} % of its Gaussians lie inside {label}'s frame-0 visual hull "
                            f"(at least {100 * INSIDE_HULL:.0f} %)")
    if problems:
        raise SgausError(f"{label} does not show the fitted object in its rest pose at frame 0 (after a shift of "
                         f"{t:+.3f} m along the ground normal: {'; '.join(problems)}); a counterfactual evaluation "
                         "needs a recording of the same object")
    return out


def _inside(frames: FrameCache, points: np.ndarray) -> np.ndarray:
    from pipeline.fit.geometry import inside_visual_hull

    return inside_visual_hull(torch.from_numpy(points).float(), frames.alpha(0), frames.cameras).numpy()


def placed(asset: Asset, shift: np.ndarray, gravity, ground_point, ground_normal, frame_dt: float) -> Asset:
    """The asset moved rigidly by ``shift`` [3] under the given gravity, ground plane and frame time
    (springs, binding, stiffness and the rest unchanged; the kernel tables shared)."""
    s = torch.tensor(shift, dtype=asset.model.rest_positions.dtype)
    model = asset.model.translated(s).with_physics(
        gravity=tuple(gravity), ground_point=None if ground_point is None else tuple(ground_point),
        ground_normal=tuple(ground_normal))
    g = asset.gaussians.detach_clone()
    g.means = g.means + s.to(g.means.dtype)
    return dataclasses.replace(asset, gaussians=g, model=model,
                               integrator=dataclasses.replace(asset.integrator, frame_dt=float(frame_dt)))


def refit_velocity(asset: Asset, fit, frames: FrameCache, scene: SceneInfo | None, n_frames: int,
                   progress: bool, log) -> tuple[torch.Tensor, int, str]:
    """v0 of the placed asset refitted on OTHER's frames before the first ground contact with the
    run's velocity-stage settings (``fit``, its FitSettings) and the asset's own physics: (v0 for the asset's substeps, the
    frames used, where the contact frame came from)."""
    from pipeline.fit import velocity as velocity_stage
    from pipeline.fit.geometry import detect_contact_frame

    if scene is not None and scene.contact_frame is not None:
        contact, source = scene.contact_frame, "scene.json"
    elif asset.model.ground_point is None:
        contact, source = n_frames, "no ground"
    else:
        contact = detect_contact_frame(frames, asset.model.ground_point, asset.model.unit_normal().tolist(), n_frames,
                                       asset.gaussians)
        source = "detected from the visual hull"
    n_vel = int(max(2, min(contact, n_frames)))
    settings = dataclasses.replace(fit.velocity(n_vel), target_substeps=asset.integrator.substeps)
    log(f"refitting the initial velocity on frames 0..{n_vel - 1} (first contact at frame {contact}, {source})")
    r = velocity_stage.run(asset.gaussians, asset.model, asset.binding, frames, asset.integrator.frame_dt, settings,
                           progress, params=asset.params)
    if not torch.isfinite(r.v0).all():
        raise SgausError("the initial velocity refitted on the other recording is not finite; its frames before "
                         "contact may not show the object")
    return r.v0.float(), n_vel, source


# ------------------------------------------------------------------ evaluation
def summarise(rows: list[dict]) -> dict:
    """Means over frames 1..n-1 (frame 0 is the placed rest pose itself)."""
    rest = [r for r in rows if r["frame"] >= 1]
    return {k: mean_metric(rest, k) for k in KEYS}


def markdown_table(result: dict, caption: str) -> str:
    lines = ["| method | CD ↓ | EMD ↓ | PSNR ↑ | SSIM ↑ |", "|---|---|---|---|---|"]
    rows = [("spring_gaus", result["counterfactual"]), *result["baselines"].items()]
    for name, r in rows:
        lines.append(f"| {LABELS.get(name, name)} | {fmt_metric(r['cd'], 2)} | {fmt_metric(r['emd'], 3)} "
                     f"| {fmt_metric(r['psnr'], 2)} | {fmt_metric(r['ssim'], 3)} |")
    return "\n".join(lines) + "\n\n" + caption + "\n"


def output_dir(run_dir: RunDir, data) -> Path:
    return run_dir.root / "eval_counterfactual" / Path(data).resolve().name


def evaluate_run(run, data, scale: float | None = None, baselines: bool = True, camera: str | None = None,
                 progress: bool = True, log=print, last_complete: bool = False) -> dict:
    """`sgaus eval RUN --data OTHER`: the counterfactual evaluation when OTHER is another recording
    of the fitted object, else the plain evaluation (pipeline.evaluate.evaluate). Either writes
    into RUN, so it holds the run's writer lock throughout (pipeline/data/runlock.py)."""
    from pipeline.asset import load_asset
    from pipeline.evaluate import evaluate as evaluate_fitted

    run_dir = RunDir(run, create=False, lock="sgaus eval")
    try:
        run_dir.require_complete(last_complete)
        asset = load_asset(run)
        if data is None or not is_other_recording(asset, data):
            return evaluate_fitted(run, data, scale, baselines, camera, progress, log, last_complete)
        return evaluate(run_dir, asset, data, scale, baselines, camera, progress, log)
    finally:
        run_dir.release()


def evaluate(run_dir: RunDir, asset: Asset, data, scale: float | None = None, baselines: bool = True,
             camera: str | None = None, progress: bool = True, log=print) -> dict:
    """The counterfactual evaluation of RUN's (complete, loaded) ``asset`` on the recording ``data``
    (see the module docstring); everything is checked before any work and nothing is written
    when it is refused. Returns metrics.json's content and ``output``, the directory written."""
    fitted_root = Path(asset.info["data"])
    ds = load_dataset(data)
    label = ds.root.name
    other = _conditions(ds.scene)
    fitted_scene = read_scene(fitted_root) if (fitted_root / "scene.json").is_file() else None
    fitted = _conditions(fitted_scene) if fitted_scene is not None else {
        "gravity": list(asset.model.gravity), "ground_normal": asset.model.unit_normal().tolist(),
        **({"ground_height": float(np.dot(asset.model.ground_point, asset.model.unit_normal()))}
           if asset.model.ground_point is not None else {})}
    changed = _changed(fitted, other)
    scale = float(scale if scale is not None else asset.info.get("image_scale", 1.0))
    if not 0 < scale <= 1:
        raise SgausError(f"--scale must lie in (0, 1], got {scale}")
    frame_dt = ds.frame_dt or asset.integrator.frame_dt
    n = ds.n_frames
    if n < 2:
        raise SgausError(f"{ds.root}: a counterfactual evaluation needs at least 2 frames, the recording has {n}")
    gt = load_ground_truth(ds, n)
    fit = fit_settings(run_dir)  # read and checked before any work
    cam_index = ds.cameras.index(camera) if camera else 0
    # OTHER's conditions; the fitted ones where its scene.json says nothing
    kept = [name for name, there in (("gravity", "gravity" in other), ("ground plane", "ground_height" in other))
            if not there]
    gravity = tuple(other["gravity"]) if "gravity" in other else asset.model.gravity
    if "ground_height" in other:
        normal = tuple(other["ground_normal"])
        ground_point = tuple(other["ground_height"] * np.asarray(normal))
    else:
        normal, ground_point = tuple(asset.model.unit_normal()), asset.model.ground_point
    up = np.asarray(normal, dtype=np.float64)
    if ground_point is None and np.linalg.norm(gravity) > 0:
        up = -np.asarray(gravity, dtype=np.float64) / np.linalg.norm(gravity)
    frames = FrameCache(ds, scale)
    pose = match_rest_pose(asset, ds, frames, up, ground_point, label, fitted_root)
    shift = pose["shift"] * up / np.linalg.norm(up)
    cf = placed(asset, shift, gravity, ground_point, normal, frame_dt)
    log(f"counterfactual evaluation on {label}: changed {', '.join(changed) or 'nothing the scene files state'}; "
        f"the asset shifted by {pose['shift']:+.4f} m along the ground normal onto frame 0")

    v0, n_vel, contact_source = refit_velocity(cf, fit, frames, ds.scene, n, progress, log)
    cf = dataclasses.replace(cf, v0=v0)
    log(f"simulating the asset over {n} frames under {label}'s conditions")
    _p, means, substeps = simulate_asset(cf, n - 1)
    per_frame = {"spring_gaus": frame_metrics(cf, means, ds, range(n), scale, progress, "counterfactual", gt)}
    result = {"counterfactual": summarise(per_frame["spring_gaus"]), "baselines": {}, "skipped": {}}
    if baselines:
        hold = means[:1].expand_as(means)
        per_frame["hold"] = frame_metrics(cf, hold, ds, range(n), scale, progress, "hold", gt)
        single = single_k_asset(run_dir, fit, asset, None, progress, cached_only=True)
        if single is None:
            result["skipped"]["single_k"] = (
                "the run itself is single k" if fit.single_k else
                "the run has no single-k refit (run `sgaus eval RUN` with its baselines first)")
        else:
            single = dataclasses.replace(placed(single, shift, gravity, ground_point, normal, frame_dt), v0=v0)
            _p, means_k, _ = simulate_asset(single, n - 1)
            per_frame["single_k"] = frame_metrics(single, means_k, ds, range(n), scale, progress, "single k", gt)
        for name, factor in STIFFNESS_SCALES.items():
            scaled = dataclasses.replace(cf, params=dataclasses.replace(
                cf.params, log_stiffness=cf.params.log_stiffness + math.log10(factor)))
            _p, means_s, _ = simulate_asset(scaled, n - 1)
            per_frame[name] = frame_metrics(scaled, means_s, ds, range(n), scale, progress, name, gt)
        result["baselines"] = {name: summarise(rows) for name, rows in per_frame.items() if name != "spring_gaus"}
    if not result["skipped"]:
        del result["skipped"]
    true_v0 = other.get("velocity")
    result["v0"] = {"refitted": v0.tolist(), "true": true_v0, "fitted_run": asset.v0.tolist(),
                    "error": None if true_v0 is None else float(np.linalg.norm(v0.numpy() - np.asarray(true_v0))),
                    "frames": n_vel, "contact_from": contact_source}
    result["conditions"] = {"fitted": fitted, "other": other, "changed": changed, "kept_from_fit": kept,
                            "simulated": {"gravity": list(cf.model.gravity),
                                          "ground_point": None if ground_point is None else list(cf.model.ground_point),
                                          "ground_normal": list(cf.model.ground_normal), "frame_dt": frame_dt,
                                          "substeps": substeps}}
    result["rest_pose"] = pose
    adir = run_dir.root / "asset"
    result["provenance"] = {"asset": hash_files(p for p in adir.iterdir() if p.is_file()),
                            "data": hash_files(p for p in ds.root.rglob("*") if p.is_file()),
                            "dataset": str(ds.root.resolve()), "fitted_dataset": str(fitted_root)}
    result["settings"] = {"n_frames": n, "frames_averaged": [1, n - 1], "image_scale": scale,
                          "emd_subset": metrics.EMD_SUBSET, "emd_seed": metrics.EMD_SEED,
                          "geometry_reference": "surface particles"}
    table = markdown_table(result, caption(result, fitted_root.name, label, len(ds.cameras), gt is not None))
    fps = min(30.0, 1.0 / frame_dt)
    out = output_dir(run_dir, data)
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", result)
        write_json(tmp / "per_frame.json", per_frame)
        write_text(tmp / "metrics.md", table)
        side_by_side_video(tmp / f"video_{ds.cameras.names[cam_index]}.mp4", cf, means, ds, cam_index, scale, fps)
    log(table)
    return {**result, "output": str(out)}


def caption(result: dict, fitted_name: str, label: str, n_cameras: int, has_gt: bool) -> str:
    c, v, pose = result["conditions"], result["v0"], result["rest_pose"]
    n = result["settings"]["n_frames"]
    changed = describe_changes(c["changed"], c["fitted"], c["other"]) or "none that both scene files state"
    text = (f"Counterfactual metrics: the asset fitted on {fitted_name} predicts {label}, a recording of the same "
            f"object under other conditions; none of its frames was fitted. Changed conditions ({fitted_name} -> "
            f"{label}): {changed}. The asset is simulated from {label}'s frame 0 (its rest pose shifted by "
            f"{pose['shift']:+.4f} m along the ground normal, checked against the {pose['reference']}) under {label}'s "
            + ("gravity and ground plane" if not c["kept_from_fit"] else
               f"conditions, the fitted {' and '.join(c['kept_from_fit'])} where {label} states none")
            + f", with v0 refitted on its frames 0-{v['frames'] - 1} before contact ("
            + _show([round(x, 3) for x in v["refitted"]]) + " m/s"
            + (f"; true {_show(v['true'])} m/s" if v["true"] is not None else "")
            + "); the fitted stiffness, soft vector and friction are kept"
            + (f" ({label}'s Coulomb friction coefficient has no counterpart in the spring-mass model)"
               if "friction" in c["changed"] else "")
            + f". Mean over frames 1-{n - 1}. ")
    if has_gt:
        text += ("CD: squared-distance Chamfer distance in 1e3 mm^2 (scene unit = 1 m); EMD: mean matched distance in m "
                 f"of an exact assignment on {metrics.EMD_SUBSET}-point random subsets (seed {metrics.EMD_SEED}); both "
                 "between the predicted Gaussian centres and the ground truth's surface particles. ")
    else:
        text += f"{label} has no ground-truth particles: CD and EMD are not available. "
    text += f"PSNR/SSIM over all {n_cameras} cameras at image scale {result['settings']['image_scale']:g}."
    if result["baselines"] or result.get("skipped"):
        text += (" hold: the object frozen at frame 0. single k: the run's single-k refit, placed and given the "
                 "same v0" + (f" (skipped: {result['skipped']['single_k']})" if "single_k" in result.get("skipped", {})
                                else "")
                 + ". stiffness x10 / x0.1: the asset with every stiffness scaled (does the identified stiffness "
                 "matter?).")
    return text
