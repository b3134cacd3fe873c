"""Physical identification over a grid of scenes: does `sgaus fit` find the material?

    python benchmarks/bench_identify.py [--out DIR] [--only NAME ...] [--preset fast] [--json] [--set NAME=VALUE ...]

Generates each scene once (cached in DIR/data, default bench_out/identify; again when an older
generator wrote it or its number of static photos differs), fits it with the preset (cached with
--resume), evaluates it with the hold and single-k baselines, and prints one row per scene: the
true Young's modulus, the fitted mean log10 k, kappa, the friction factor, the springs' damping
zeta0 (searched with --set global_search_zeta0=true), future CD / PSNR for
sgaus, hold and single k, and the fit's wall time. Scenes (5 views, 128 px, 30 frames, 20 fitted,
as the issue measured them, and 24 static photos of frame 0 from the upper hemisphere,
generate-mpm --static-views, for the shape; --static-elevation -15,70 photographs it from below too):

* torus_E1e4 .. torus_E1e6: the same torus dropped the same way at E = 1e4, 3e4, 1e5, 3e5, 1e6 Pa
* pawn_thrown: a soft pawn (E = 1e4) thrown sideways
* banana_hetero: a banana whose +x half is 10x stiffer (E = 3e4 / 3e5)
* torus_hetero: the tori's torus whose +x half is 10x stiffer (E = 3e4 / 3e5)
* spot_tossed: the Spot mesh tossed up and sideways

Targets: fitted mean log10 k strictly increasing with E over the tori, spanning at least 1.5
decades from 1e4 to 1e6; future CD and PSNR better than hold on every scene and better than
single k on the heterogeneous ones; their stiffer half with the higher mean fitted log10 k.
For each heterogeneous scene it also prints which split of the stiffness field the ground truth
favours under the spring model at all (split_probe: the fitted asset re-simulated with its field
made uniform, or split half a decade the true way or the other way, scored by the Chamfer distance
to the true particles): a split the model with these anchors disfavours is a limit of the model
(or of its anchors) on that scene, not of the optimiser.
Two more columns say why a fit predicts poorly where it does: "turn" is the mean orientation error
over the future frames (degrees between the asset's turn and the truth's; a stiff model that tips
over on landing where the MPM truth lands flat), and "underside gap / top gap / offset" compares how
far the anchors reach below the truth's unseen bottom, and above its top that the cameras see (the
masks' margin on every side), with the contact offset the fit chose (JSON keys
future_orientation_error, underside_gap, top_gap, contact_offset; metres).
With --truth-anchors each fit takes its anchors from the truth's own particles at frame 0 (fit
setting anchor_points, thinned by farthest-point sampling) and searches no contact offset, the
anchors' bottom being the true one: what the identification gives when the reconstruction of the
volume is perfect, to tell its errors from those of the physics (use a --tag of its own).
With --known-depth each fit's contact offset is pinned at that scene's underside gap (how far its
default anchors reach below the truth's bottom: the depth of the unseen underside and the masks'
margin, which the images alone leave open, README stage 5) and its dense stage runs from three
starts (dense_start_offsets 0, +0.4 and +0.8 decades, the one that fits the fitted frames best
kept): what the identification gives when that depth is known. Its runs start from a copy of the
scene's run without the tag (fitted first where there is none), whose anchors fix the depth, so
only the global and dense stages run again (use a --tag of its own).
With --json, one JSON object {"scenes": [...]} closes the output.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STATIC_VIEWS = 24
COMMON = ["--views", "5", "--frames", "30", "--fit-frames", "20", "--resolution", "128",
          "--static-views", str(STATIC_VIEWS)]
SCENES = {
    **{f"torus_E{tag}": dict(args=["--shape", "torus", "--youngs-modulus", str(e)], youngs_modulus=e)
       for tag, e in (("1e4", 1e4), ("3e4", 3e4), ("1e5", 1e5), ("3e5", 3e5), ("1e6", 1e6))},
    "pawn_thrown": dict(args=["--shape", "pawn", "--youngs-modulus", "1e4", "--velocity", "0.6,0.5,0",
                              "--drop-height", "0.15"], youngs_modulus=1e4),
    "banana_hetero": dict(args=["--shape", "banana", "--youngs-modulus", "3e4", "--heterogeneous",
                                "--stiffness-factor", "10"], youngs_modulus=3e4, heterogeneous=True),
    "torus_hetero": dict(args=["--shape", "torus", "--youngs-modulus", "3e4", "--heterogeneous",
                               "--stiffness-factor", "10"], youngs_modulus=3e4, heterogeneous=True),
    "spot_tossed": dict(args=["--mesh", str(ROOT / "assets" / "meshes" / "spot.obj"), "--youngs-modulus", "5e4",
                              "--velocity", "0.6,1.2,0.3", "--drop-height", "0.1", "--rotate", "0,30,0"],
                        youngs_modulus=5e4),
}


def sgaus(*args) -> None:
    cmd = [sys.executable, "-c", "from cli import main; main()", *map(str, args)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: sgaus {' '.join(map(str, args))}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


SPLIT_PROBE = 0.25  # decades either side of the fitted mean: halves half a decade apart


def split_probe(asset, data: Path, stiff) -> dict:
    """Which split of the stiffness field the ground truth favours under the spring model, whatever
    the optimiser did: the mean CD over every frame of the fitted asset with its field replaced by
    its mean ("uniform"), by the mean +- SPLIT_PROBE with the generator's stiffer half stiffer
    ("true"), and the other way round ("reversed"). Where "reversed" scores best, no optimiser of
    this model with these anchors can find the true split from these frames: it answers a
    stiffness contrast differently from the MPM truth on this shape (other anchors may not)."""
    import dataclasses

    import torch

    from pipeline import metrics
    from pipeline.data.datasets import load_dataset
    from pipeline.evaluate import load_ground_truth
    from pipeline.simulate import simulate_asset
    from taichi_sim.runtime import init_taichi

    init_taichi("cpu")
    ds = load_dataset(data)
    gt = load_ground_truth(ds, ds.n_frames)
    log_k = asset.params.log_stiffness
    sign = stiff.to(log_k.dtype) * 2 - 1
    out = {}
    for label, field in (("true", sign * SPLIT_PROBE), ("uniform", 0 * sign), ("reversed", -sign * SPLIT_PROBE)):
        probe = dataclasses.replace(asset, params=dataclasses.replace(asset.params, log_stiffness=log_k.mean() + field))
        _pos, means, _ = simulate_asset(probe, ds.n_frames - 1)
        out[label] = float(np.mean([metrics.chamfer_distance(means[f], gt[f]) for f in range(1, ds.n_frames)]))
    return out


def underside(asset, data: Path) -> dict:
    """How far the anchors reach below the truth's bottom at frame 0 ("underside_gap", metres along
    the ground's normal; cameras above the object never see its underside, so the anchors of its
    visual hull hang below it) and how deep the fit lets them sink below the ground
    ("contact_offset", the global search's; a raised ground counts negative). Where the two
    differ, the offset stands in for something else: at the stiff end the contact time (when the
    fall stops), which also sets when a stiff object leaves the ground again. "top_gap": how far
    they reach above the truth's top, which the cameras do see: the part of the underside gap that
    is a margin of the masks on every side (the generator's splats draw the object beyond its
    particles), not the unseen underside."""
    from pipeline.data.scene import load_particles, read_scene

    model = asset.model
    if model.ground_point is None:
        return {"underside_gap": None, "top_gap": None, "contact_offset": None}
    normal = np.asarray(model.unit_normal(), np.float64)
    heights = model.rest_positions.double().numpy() @ normal
    truth_heights = load_particles(data, 0, surface_only=False) @ normal
    lowest, truth = float(heights.min()), float(truth_heights.min())
    declared = float(np.asarray(model.ground_point, np.float64) @ normal)
    raised = declared - float(np.asarray(read_scene(data).ground_point, np.float64) @ normal)  # placed() raised it
    return {"underside_gap": truth - lowest, "top_gap": float(heights.max() - truth_heights.max()),
            "contact_offset": model.contact_offset - raised}


KNOWN_DEPTH_STARTS = "0,0.4,0.8"  # decades above the global search's stiffness: a pinned offset sits the search low


def known_depth_settings(base: Path, data: Path) -> list[str]:
    """The fit settings of --known-depth for a scene whose default run is ``base``: the contact
    offset pinned at its anchors' underside gap (a fraction of their height, as the setting wants;
    0 where they do not reach below the truth's bottom) and the dense starts."""
    from pipeline.asset import load_asset
    from pipeline.fit.global_search import object_height

    asset = load_asset(base)
    gap = underside(asset, data)["underside_gap"]
    if gap is None:
        raise SystemExit(f"{base}: --known-depth needs a ground")
    fraction = max(0.0, gap) / object_height(asset.model)
    return ["--set", f"global_contact_offset_min={fraction:.6f}", "--set", f"global_contact_offset_max={fraction:.6f}",
            "--set", f"dense_start_offsets={KNOWN_DEPTH_STARTS}"]


def summarise(name: str, spec: dict, run: Path, fit_s: float, data: Path) -> dict:
    import torch

    from pipeline.asset import load_asset
    from taichi_sim.spring_params import friction_from_logit

    asset = load_asset(run)
    m = json.loads((run / "eval" / "metrics.json").read_text())
    log_k = asset.params.log_stiffness.double()
    row = {
        "name": name, "youngs_modulus": spec["youngs_modulus"], "mean_log_k": float(log_k.mean()),
        "kappa": float(asset.params.kappa), "friction": float(friction_from_logit(asset.params.friction_logit)),
        "future_cd": m["future"]["cd"], "future_psnr": m["future"]["psnr"],
        "hold_future_cd": m["baselines"]["hold"]["future"]["cd"],
        "hold_future_psnr": m["baselines"]["hold"]["future"]["psnr"],
        "single_k_future_cd": m["baselines"].get("single_k", {}).get("future", {}).get("cd"),
        "single_k_future_psnr": m["baselines"].get("single_k", {}).get("future", {}).get("psnr"),
        "fit_s": fit_s,
        # the penalty ground's fitted restitution (None with the authors' projection ground)
        "restitution": asset.model.restitution if asset.model.contact == "penalty" else None,
        # the springs' damping (the global search's with global_search_zeta0, else the setting's)
        "zeta0": float(asset.model.zeta0),
        # the share of the asset's local tetrahedra inverted over the future
        # frames (None for an eval written before sgaus measured it)
        "future_folded": m.get("folded", {}).get("future"),
        # how far the predicted asset turned away from the truth over the future frames, degrees
        # (a stiff model that tips on an uneven set of anchors where the truth lands flat)
        "future_orientation_error": m.get("orientation_error_deg", {}).get("future"),
        **underside(asset, data),
    }
    if spec.get("heterogeneous"):
        x = asset.model.rest_positions[:, 0].double()
        stiff = x > torch.median(x)  # the generator makes the +x half stiffer (scene.json: "x > median")
        row["stiff_half_log_k"] = float(log_k[stiff].mean())
        row["soft_half_log_k"] = float(log_k[~stiff].mean())
        row["split_cd"] = split_probe(asset, data, stiff)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "identify"))
    ap.add_argument("--only", nargs="*", default=None, help="scene names to run (default: all)")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                    help="fit settings for every scene (e.g. global_search=false for the old behaviour)")
    ap.add_argument("--tag", default="", help="suffix of the run directories (to compare settings)")
    ap.add_argument("--static-elevation", default="10,70", metavar="LOW,HIGH",
                    help="elevations of the static photos (generate-mpm --static-elevation); a scene generated with "
                         "others is generated again")
    ap.add_argument("--truth-anchors", action="store_true",
                    help="anchors from the truth's particles at frame 0 and no contact offset (the volume known "
                         "exactly, to tell reconstruction errors from identification errors)")
    ap.add_argument("--known-depth", action="store_true",
                    help="the contact offset pinned at the anchors' true underside gap and the dense stage from "
                         f"three starts ({KNOWN_DEPTH_STARTS} decades up): the depth of the unseen underside known")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.known_depth and (not args.tag or args.truth_anchors):
        raise SystemExit("--known-depth needs a --tag of its own (its runs start from copies of the untagged "
                         "ones) and does not go with --truth-anchors")
    sys.path.insert(0, str(ROOT))
    from pipeline.data.scene import read_scene
    from pipeline.data.cameras import check_elevation
    from pipeline.generate import GENERATOR_VERSION, STATIC_ELEVATION

    from taichi_sim.errors import SgausError

    try:
        elevation = list(check_elevation(args.static_elevation.split(","), "--static-elevation"))
    except SgausError as e:
        raise SystemExit(str(e)) from None

    out = Path(args.out)
    names = args.only or list(SCENES)
    unknown = [n for n in names if n not in SCENES]
    if unknown:
        raise SystemExit(f"unknown scenes {unknown}; known: {', '.join(SCENES)}")
    rows = []
    for name in names:
        spec = SCENES[name]
        data, run = out / "data" / name, out / "runs" / f"{name}{args.tag}"
        scene = read_scene(data)
        cams = {} if scene is None else scene.raw.get("cameras", {})
        if (scene is None or scene.generator_version != GENERATOR_VERSION  # none yet, or an older (or unnamed) one
                or cams.get("static_views", 0) != STATIC_VIEWS
                or cams.get("static_elevation_deg", list(STATIC_ELEVATION)) != elevation):
            print(f"{name}: generating", flush=True)
            sgaus("generate-mpm", *spec["args"], *COMMON, f"--static-elevation={args.static_elevation}", "--out", data,
                  "--quiet", "--overwrite")
        print(f"{name}: fitting", flush=True)
        t0 = time.perf_counter()
        sets = [a for s in args.sets for a in ("--set", s)]
        if args.truth_anchors:
            sets += ["--set", f"anchor_points={data / 'particles' / '000.npz'}", "--set", "global_contact_offset_max=0"]
        if args.known_depth:
            base = out / "runs" / name
            if not (base / "asset").exists():
                print(f"{name}: fitting the default run first (its anchors fix the depth)", flush=True)
            sgaus("fit", data, "--out", base, "--preset", args.preset, "--resume", "--quiet", *sets)
            if not run.exists():
                shutil.copytree(base, run, ignore=shutil.ignore_patterns("eval", "eval_counterfactual", ".sgaus.lock*"))
            sets += known_depth_settings(base, data)
            t0 = time.perf_counter()
        sgaus("fit", data, "--out", run, "--preset", args.preset, "--resume", "--quiet", *sets)
        fit_s = time.perf_counter() - t0
        if not (run / "eval" / "metrics.json").exists():  # a fit that wrote a new asset removed the old eval
            sgaus("eval", run, "--quiet")
        rows.append(summarise(name, spec, run, fit_s, data))
        r = rows[-1]
        print(f"  mean log10 k {r['mean_log_k']:.2f}, future CD {r['future_cd']:.2f} (hold {r['hold_future_cd']:.2f}), "
              f"PSNR {r['future_psnr']:.2f} (hold {r['hold_future_psnr']:.2f}), fit {fit_s:.0f} s", flush=True)

    fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    cm = lambda v: None if v is None else 100 * v  # noqa: E731
    print()
    print("| scene | E (Pa) | mean log10 k | kappa | friction | restitution | zeta0 "
          "| future CD sgaus / hold / single k | future PSNR sgaus / hold / single k "
          "| folded % | turn ° | underside gap / top gap / offset cm | fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        extra = f" (stiff half {r['stiff_half_log_k']:.2f}, soft half {r['soft_half_log_k']:.2f})" \
            if "stiff_half_log_k" in r else ""
        print(f"| {r['name']} | {r['youngs_modulus']:.0e} | {r['mean_log_k']:.2f}{extra} | {r['kappa']:.2f} | "
              f"{r['friction']:.2f} | {fmt(r['restitution'])} | {r['zeta0']:.3g} "
              f"| {fmt(r['future_cd'])} / {fmt(r['hold_future_cd'])} / {fmt(r['single_k_future_cd'])} "
              f"| {fmt(r['future_psnr'])} / {fmt(r['hold_future_psnr'])} / {fmt(r['single_k_future_psnr'])} "
              f"| {fmt(None if r['future_folded'] is None else 100 * r['future_folded'], 1)} "
              f"| {fmt(r['future_orientation_error'], 1)} "
              f"| {fmt(cm(r['underside_gap']), 1)} / {fmt(cm(r['top_gap']), 1)} / {fmt(cm(r['contact_offset']), 1)} "
              f"| {r['fit_s']:.0f} |")
    tori = [r for r in rows if r["name"].startswith("torus_E")]
    checks = []
    if len(tori) > 1:
        ks = [r["mean_log_k"] for r in sorted(tori, key=lambda r: r["youngs_modulus"])]
        checks.append(("mean log10 k increases with E over the tori", all(np.diff(ks) > 0)))
        checks.append((f"span 1e4 -> 1e6: {ks[-1] - ks[0]:.2f} decades (>= 1.5)", ks[-1] - ks[0] >= 1.5))
    for r in rows:
        checks.append((f"{r['name']}: future CD and PSNR better than hold",
                       r["future_cd"] < r["hold_future_cd"] and r["future_psnr"] > r["hold_future_psnr"]))
        if "stiff_half_log_k" in r:
            checks.append((f"{r['name']}: better than single k",
                           r["single_k_future_cd"] is not None and r["future_cd"] < r["single_k_future_cd"]))
            checks.append((f"{r['name']}: stiffer half fitted stiffer", r["stiff_half_log_k"] > r["soft_half_log_k"]))
    for r in rows:
        if "split_cd" in r:
            c = r["split_cd"]
            best = {"true": "the true split", "uniform": "a uniform field", "reversed": "the reversed split"}[
                min(c, key=c.get)]
            print(f"\n{r['name']}: mean CD over every frame with the fitted field replaced by its mean split "
                  f"+-{SPLIT_PROBE} decades the true way {c['true']:.2f}, uniform {c['uniform']:.2f}, reversed "
                  f"{c['reversed']:.2f}: under the spring model the truth favours {best}")
    print()
    for label, ok in checks:
        print(f"{'OK    ' if ok else 'MISSED'} {label}")
    if args.json:
        print(json.dumps({"scenes": rows}))


if __name__ == "__main__":
    main()
