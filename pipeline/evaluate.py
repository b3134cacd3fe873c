"""`sgaus eval`: simulate a fitted asset over every frame and compare it with the ground truth.

Geometry: the predicted Gaussian centres against the ground truth's *surface* particles
(particles/<frame>.npz, flag ``surface``): the Gaussians sit on the object's surface, so a
comparison with interior particles would mostly measure the object's thickness. Chamfer
distance in 1e3 mm^2 (squared distances, one scene unit = 1 m), EMD as the mean matched
distance (m) of an exact assignment between equal random subsets (pipeline/metrics.py).
Appearance: PSNR and SSIM of renders against every camera's images.

Means are taken over the fitted frames 1..F-1 (dynamic reconstruction; frame 0 is the static
reconstruction itself) and over the frames after them (future prediction). Two baselines run
on the same data: "hold" (the fitted trajectory, frozen at the last fitted frame afterwards)
and "single_k" (the dynamic stage refitted with one global stiffness, Table 3's ablation).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline import metrics
from pipeline.asset import Asset, load_asset
from pipeline.data.datasets import VideoDataset, load_dataset
from pipeline.data.files import atomic_dir, write_json, write_text
from pipeline.data.frames import FrameCache
from pipeline.data.rundir import RunDir, hash_files, hash_key
from pipeline.data.scene import has_particles, load_particles, particles_path
from pipeline.simulate import render_backdrop, simulate_asset, write_video
from render.losses import psnr, ssim
from taichi_sim.errors import SgausError
from taichi_sim.folding import folded_fraction, local_tetrahedra

METHOD_LABELS = {"spring_gaus": "Spring-Gaus (sgaus)", "hold": "hold (frozen after fit)", "single_k": "Spring-Gaus, single k"}


def frame_metrics(asset: Asset, means: torch.Tensor, ds: VideoDataset, frames, scale: float,
                  progress: bool, desc: str, ground_truth: list | None = None) -> list[dict]:
    """Per-frame CD, EMD (against ``ground_truth`` particles, when given), PSNR, SSIM of a
    trajectory of Gaussian centres [F,G,3]."""
    cache = FrameCache(ds, scale)
    out = []
    for f in tqdm(list(frames), desc=desc, disable=not progress, leave=False):
        row = {"frame": f}
        pred = means[f].detach()
        if ground_truth is not None:
            row["cd"] = metrics.chamfer_distance(pred, ground_truth[f])
            row["emd"] = metrics.earth_movers_distance(pred, ground_truth[f])
        with torch.no_grad():
            rgb, alpha = asset.gaussians.render_with_alpha(cache.cameras, pred)
            rgb = rgb.clamp(0, 1)
            target = cache.rgb(f)
        row["psnr"] = float(psnr(rgb, target).mean())
        row["ssim"] = float(ssim(rgb, target).mean())
        if asset.info.get("capture"):  # a real capture: silhouettes too (its colours differ in exposure)
            mine, theirs = alpha[..., 0] > 0.5, cache.alpha(f)[..., 0] > 0.5
            row["mask_iou"] = float(((mine & theirs).sum((1, 2)) / (mine | theirs).sum((1, 2)).clamp_min(1)).mean())
        cache.evict(f)  # frames are read once here: keep memory flat
        out.append(row)
    return out


def load_ground_truth(ds: VideoDataset, n_frames: int) -> list | None:
    """Every frame's ground-truth surface particles, read and checked before any work (None when
    the dataset has no ground truth at all). A missing frame is an error naming it: it would
    silently shrink the CD/EMD means."""
    if not has_particles(ds.root):
        return None
    missing = [f for f in range(n_frames) if not particles_path(ds.root, f).is_file()]
    if missing:
        shown = ", ".join(str(particles_path(ds.root, f).relative_to(ds.root)) for f in missing[:5])
        raise SgausError(f"{ds.root}: ground-truth particles are missing for {len(missing)} frame(s) ({shown}"
                         f"{', ...' if len(missing) > 5 else ''}); restore them or evaluate against a complete dataset")
    return [load_particles(ds.root, f) for f in range(n_frames)]


def mean_metric(rows: list[dict], key: str):
    vals = [r[key] for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]
    return float(np.mean(vals)) if vals else None


def summarise(rows: list[dict], fit_frames: int) -> dict:
    recon = [r for r in rows if 1 <= r["frame"] < fit_frames]
    future = [r for r in rows if r["frame"] >= fit_frames]
    keys = ("cd", "emd", "psnr", "ssim") + (("mask_iou",) if any("mask_iou" in r for r in rows) else ())
    return {"reconstruction": {k: mean_metric(recon, k) for k in keys}, "future": {k: mean_metric(future, k) for k in keys}}


def fmt_metric(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(result: dict, caption: str) -> str:
    head = ("| method | recon CD ↓ | recon EMD ↓ | recon PSNR ↑ | recon SSIM ↑ "
            "| future CD ↓ | future EMD ↓ | future PSNR ↑ | future SSIM ↑ |")
    lines = [head, "|" + "---|" * 9]
    rows = [("spring_gaus", {k: result[k] for k in ("reconstruction", "future")})]
    rows += [(name, res) for name, res in result.get("baselines", {}).items()]
    for name, res in rows:
        r, f = res["reconstruction"], res["future"]
        lines.append(
            f"| {METHOD_LABELS.get(name, name)} | {fmt_metric(r['cd'], 2)} | {fmt_metric(r['emd'], 3)} | {fmt_metric(r['psnr'], 2)} | "
            f"{fmt_metric(r['ssim'], 3)} | {fmt_metric(f['cd'], 2)} | {fmt_metric(f['emd'], 3)} | {fmt_metric(f['psnr'], 2)} | {fmt_metric(f['ssim'], 3)} |"
        )
    return "\n".join(lines) + "\n\n" + caption + "\n"


def side_by_side_video(path: Path, asset: Asset, means: torch.Tensor, ds: VideoDataset, camera: int,
                       scale: float, fps: float) -> Path:
    """An mp4 of ground truth | prediction for one camera over every frame; the prediction stands on
    the asset's ground plane when it has one (pipeline.simulate.render_backdrop), the ground truth
    is shown as recorded."""
    cache = FrameCache(ds, scale)
    cam = cache.cameras[camera]
    frames = []
    for f in range(len(means)):
        with torch.no_grad():
            pred = render_backdrop(asset, cam, means[f]).clamp(0, 1)[0]
        gt = cache.rgb(f, [camera])[0]
        img = torch.cat([gt, pred], dim=1).clamp(0, 1)
        frames.append((img.numpy() * 255).astype(np.uint8))
        cache.evict(f)
    return write_video(path, frames, fps)


def evaluate(run, data=None, scale: float | None = None, baselines: bool = True, camera: str | None = None,
             progress: bool = True, log=print, last_complete: bool = False) -> dict:
    """Evaluate RUN and write RUN/eval/{metrics.json, metrics.md, per_frame.json, video_<camera>.mp4}
    and then RUN/report.html. metrics.json records the hashes of the asset and dataset it was computed from.
    (Another recording of the object is evaluated by pipeline.counterfactual.)"""
    run_dir = RunDir(run, create=False)
    run_dir.require_complete(last_complete)
    asset = load_asset(run)
    data = data or asset.info.get("data")
    if not data:
        raise SgausError(f"{run}: the dataset is unknown; give --data")
    ds = load_dataset(data)
    fit_frames = int(asset.info.get("fit_frames", min(20, ds.n_frames)))
    scale = float(scale if scale is not None else asset.info.get("image_scale", 1.0))
    if not 0 < scale <= 1:
        raise SgausError(f"--scale must lie in (0, 1], got {scale}")
    n = ds.n_frames
    gt = load_ground_truth(ds, n)
    settings = fit_settings(run_dir) if baselines else None  # read and checked before any work
    log(f"simulating the asset over {n} frames ({fit_frames} fitted, {n - fit_frames} future)")
    anchors, means, _ = simulate_asset(asset, n - 1)
    per_frame = {"spring_gaus": frame_metrics(asset, means, ds, range(n), scale, progress, "eval", gt)}
    result = summarise(per_frame["spring_gaus"], fit_frames)
    result["folded"] = folding(asset, anchors, per_frame["spring_gaus"], fit_frames)
    turned = orientation(asset, anchors, gt, per_frame["spring_gaus"], fit_frames)
    if turned is not None:
        result["orientation_error_deg"] = turned
    result["baselines"] = {}
    if baselines:
        # hold: identical to the fit up to its last frame, then frozen
        hold_rows = [dict(r) for r in per_frame["spring_gaus"] if r["frame"] < fit_frames]
        hold = means.clone()
        hold[fit_frames:] = means[fit_frames - 1]
        hold_rows += frame_metrics(asset, hold, ds, range(fit_frames, n), scale, progress, "eval hold", gt)
        per_frame["hold"] = hold_rows
        result["baselines"]["hold"] = summarise(hold_rows, fit_frames)
        # a capture's single-k refit would need its mask loss (pipeline.fit.capture_fit); not offered
        single = None if asset.info.get("capture") else single_k_asset(run_dir, settings, asset, ds, progress)
        if asset.info.get("capture"):
            result["skipped"] = {"single_k": "not offered for real captures (their fit is on masks, Eq. 19)"}
        if single is not None:
            _p, means_k, _ = simulate_asset(single, n - 1)
            per_frame["single_k"] = frame_metrics(single, means_k, ds, range(n), scale, progress, "eval single-k", gt)
            result["baselines"]["single_k"] = summarise(per_frame["single_k"], fit_frames)
    has_gt = any("cd" in r for r in per_frame["spring_gaus"])
    caption = (
        f"Dynamic reconstruction = mean over fitted frames 1-{fit_frames - 1}; future prediction = mean over frames "
        f"{fit_frames}-{n - 1}. "
        + ("CD: squared-distance Chamfer distance in 1e3 mm^2 (scene unit = 1 m); EMD: mean matched distance in m of an "
           f"exact assignment on {metrics.EMD_SUBSET}-point random subsets (seed {metrics.EMD_SEED}); both between the "
           "predicted Gaussian centres and the ground truth's surface particles. " if has_gt else
           "The dataset has no ground-truth particles: CD and EMD are not available. ")
        + f"PSNR/SSIM over all {len(ds.cameras)} cameras at image scale {scale:g}. "
        "hold: the fitted trajectory frozen after the last fitted frame. single k: the dynamic stage refitted with one "
        "global stiffness."
    )
    adir = Path(run) / "asset"
    result["provenance"] = {"asset": hash_files(p for p in adir.iterdir() if p.is_file()),
                            "data": hash_files(p for p in ds.root.rglob("*") if p.is_file()), "dataset": str(ds.root)}
    result["settings"] = {"fit_frames": fit_frames, "n_frames": n, "image_scale": scale,
                          "emd_subset": metrics.EMD_SUBSET, "emd_seed": metrics.EMD_SEED,
                          "geometry_reference": "surface particles"}
    cam_index = ds.cameras.index(camera) if camera else 0
    fps = min(30.0, 1.0 / ds.frame_dt) if ds.frame_dt else 10.0
    table = markdown_table(result, caption)
    table += (f"\nFolded (the share of the anchors' local tetrahedra inverted, an elastic solid's 0), "
              f"reconstruction / future: {100 * result['folded']['reconstruction']:.1f} % / "
              f"{100 * result['folded']['future']:.1f} %\n")
    if turned is not None:
        table += (f"\nOrientation error (degrees between the anchors' turn since frame 0 and the ground truth's), "
                  f"reconstruction / future: {turned['reconstruction']:.1f} / {turned['future']:.1f}\n")
    if "mask_iou" in result["future"]:
        table += "\nMask IoU (rendered alpha > 0.5 vs. the capture's masks), reconstruction / future: " + ", ".join(
            f"{METHOD_LABELS.get(k, k)} {fmt_metric(v['reconstruction']['mask_iou'], 3)} / "
            f"{fmt_metric(v['future']['mask_iou'], 3)}"
            for k, v in [("spring_gaus", result), *result["baselines"].items()]) + "\n"
    if result["folded"]["future"] > FOLD_WARNING:
        log(f"warning: the asset folds ({100 * result['folded']['future']:.1f} % of its local tetrahedra inverted over "
            "the future frames on average): its prediction is not an elastic solid's; a refit with "
            "--set global_fold_penalty=1 keeps the global search away from folding models")
    with atomic_dir(Path(run) / "eval") as tmp:
        write_json(tmp / "metrics.json", result)
        write_json(tmp / "per_frame.json", per_frame)
        write_text(tmp / "metrics.md", table)
        side_by_side_video(tmp / f"video_{ds.cameras.names[cam_index]}.mp4", asset, means, ds, cam_index, scale, fps)
    log(table)
    from pipeline.report import report_run

    log(f"report: {report_run(run, figures=False)}")
    return result


FOLD_WARNING = 0.01  # a mean folded share over the future frames above which eval warns


def folding(asset: Asset, anchors: torch.Tensor, rows: list[dict], fit_frames: int) -> dict:
    """The share of the asset's local tetrahedra folded in each frame of its anchors' trajectory
    [F,N,3] (taichi_sim/folding.py), written into ``rows`` as "folded", and its means over the
    fitted frames 1..F-1 and the future ones."""
    rest = asset.model.rest_positions
    share = folded_fraction(anchors, rest, local_tetrahedra(rest, asset.model.neighbors))
    return _per_frame(rows, "folded", [float(v) for v in share], fit_frames)


def orientation(asset: Asset, anchors: torch.Tensor, gt: list | None, rows: list[dict], fit_frames: int) -> dict | None:
    """How far the asset's anchors [F,N,3] turned away from the ground truth's particles in each frame
    (metrics.orientation_error_deg, each set's turn since its own frame 0), written into ``rows`` as
    "orientation_error_deg", and its means over the fitted frames 1..F-1 and the future ones; None
    without ground truth, or when its particles are not the same ones in every frame (no turn to
    follow then)."""
    if gt is None or any(len(g) != len(gt[0]) for g in gt):
        return None
    rest = asset.model.rest_positions
    angles = [metrics.orientation_error_deg(rest, anchors[f].detach(), gt[0], gt[f]) for f in range(len(gt))]
    return _per_frame(rows, "orientation_error_deg", angles, fit_frames)


def _per_frame(rows: list[dict], key: str, values: list[float], fit_frames: int) -> dict:
    """Write ``values`` (one per frame of the trajectory) into ``rows`` under ``key``, and return
    their means over the fitted frames 1..fit_frames-1 and the future ones (0 where there are none)."""
    for row in rows:
        row[key] = values[row["frame"]]
    recon, future = values[1:fit_frames], values[fit_frames:]
    return {"reconstruction": float(np.mean(recon)) if recon else 0.0,
            "future": float(np.mean(future)) if future else 0.0}


def fit_settings(run_dir: RunDir):
    """The FitSettings a run was fitted with (RUN/settings.yaml, checked)."""
    from pipeline.fit.settings import load_settings

    return load_settings(run_dir.root / "settings.yaml")


def single_k_asset(run_dir: RunDir, settings, asset: Asset, ds: VideoDataset | None, progress: bool,
                   cached_only: bool = False) -> Asset | None:
    """The Table 3 baseline: the dynamic stage refitted with one global stiffness, on the asset's
    own Gaussians, anchors, springs and initial velocity (cached in RUN/stages/dynamic_single_k,
    keyed by those and the whole dynamic-stage settings). It calls the dynamic stage itself; the
    run's metadata is left as it is. ``settings``: the run's FitSettings (:func:`fit_settings`).
    None when the run itself is single k, or with ``cached_only``
    when no matching refit is cached (``ds``, the fitted dataset, is then not read)."""
    from pipeline.fit import dynamic as dynamic_stage
    from pipeline.fit import global_search

    if settings.single_k:
        return None  # the run itself is the single-k ablation
    # one start: the baseline is the dense stage with one stiffness, not the fit's choice among starts
    stage = dataclasses.replace(settings.dynamic(single_k=True), start_offsets=(0.0,))
    adir = run_dir.root / "asset"
    fit_frames = int(asset.info["fit_frames"] if "fit_frames" in asset.info else min(20, ds.n_frames))
    # the baseline starts where the fit's dense stage started: from the global search when there was one
    start, min_substeps = None, 0
    if settings.global_search and (run_dir.stage_dir("global") / "global.json").exists():
        found = global_search.load(run_dir.stage_dir("global"))
        start, min_substeps = found.params, found.substeps
    key = hash_key("dynamic_single_k", hash_files([adir / "gaussians.ply", adir / "anchors.npz"]),
                   asset.v0.tolist(), asset.model.physics(), fit_frames, asset.integrator.frame_dt,
                   float(asset.info.get("image_scale", 1.0)),
                   {k: v for k, v in dataclasses.asdict(stage).items() if k != "start_offsets"},
                   None if start is None else [float(t.reshape(-1)[0]) for t in start.tensors()])
    name = "dynamic_single_k"
    resumable = RunDir(run_dir.root, resume=True, create=False)
    hit = resumable.cached(name, key)
    if hit:
        r = dynamic_stage.load(hit)
    elif cached_only:
        return None
    else:
        frames = FrameCache(ds, float(asset.info.get("image_scale", 1.0)))
        r = dynamic_stage.run(asset.gaussians, asset.model, asset.binding, asset.v0, frames, fit_frames,
                              asset.integrator.frame_dt, stage, progress, desc="single-k", start=start,
                              min_substeps=min_substeps)
        with resumable.write_stage(name, key) as d:
            dynamic_stage.save(r, d)
    integrator = dataclasses.replace(asset.integrator, substeps=r.substeps)
    return dataclasses.replace(asset, params=r.params.to(torch.float32), integrator=integrator)
