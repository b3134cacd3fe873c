"""`sgaus fit` / `sgaus eval` end to end on a tiny generated scene, stage caching and resume,
recovery of a known stiffness, and clear errors on bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from pipeline.fit.settings import make_settings
from pipeline.data.rundir import RunDir

from conftest import TINY, invoke


def test_fit_writes_a_complete_asset(tiny_run):
    for rel in ["asset/gaussians.ply", "asset/anchors.npz", "asset/physics.json", "settings.yaml", "loss.png",
                "run.json", "report.html", "figures/stiffness.png", "figures/physics.png"] + [f"stages/{s}/stage.json" for s in ("static", "anchors", "refine", "velocity", "dynamic")]:
        assert (tiny_run / rel).is_file(), rel
    phys = json.loads((tiny_run / "asset/physics.json").read_text())
    assert len(phys["log_stiffness"]) == make_settings("tiny").n_anchors
    assert np.isfinite(phys["log_stiffness"]).all()
    assert json.loads((tiny_run / "run.json").read_text())["stages_run"] == [
        "static", "anchors", "refine", "velocity", "global", "dynamic"]
    info = {s: json.loads((tiny_run / f"stages/{s}/stage.json").read_text())
            for s in ("static", "anchors", "refine", "velocity", "global", "dynamic")}
    assert all(i["seconds"] > 0 for i in info.values())  # each stage's wall time
    # the number of Gaussians from the start and after each densification that changed it (tiny:
    # 150 iterations, densified at 39, 64 and 89), then pruned once more at the end
    counts = info["static"]["gaussian_counts"]
    assert counts[0][0] == 1 and len(counts) >= 2 and all(it in (40, 65, 90) for it, _ in counts[1:])
    assert info["static"]["gaussians"] <= counts[-1][1]


def test_eval_writes_metrics_table_and_video(tiny_run):
    r = invoke("eval", tiny_run, "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((tiny_run / "eval/metrics.json").read_text())
    for part in ("reconstruction", "future"):
        assert set(m[part]) == {"cd", "emd", "psnr", "ssim"}
        assert all(np.isfinite(v) for v in m[part].values())
        for base in ("hold", "single_k"):
            assert set(m["baselines"][base][part]) == {"cd", "emd", "psnr", "ssim"}
    # the hold baseline equals the fit on the fitted frames by construction
    assert m["baselines"]["hold"]["reconstruction"] == pytest.approx(m["reconstruction"])
    table = (tiny_run / "eval/metrics.md").read_text()
    assert "future CD" in table and "surface particles" in table
    assert list((tiny_run / "eval").glob("video_*.mp4"))
    # how much of the asset folded (taichi_sim/folding.py): a share per frame, 0 at the rest frame
    rows = json.loads((tiny_run / "eval/per_frame.json").read_text())["spring_gaus"]
    shares = [r["folded"] for r in rows]
    assert shares[0] == 0.0 and all(0.0 <= v <= 1.0 for v in shares)
    fit = int(m["settings"]["fit_frames"])
    assert m["folded"]["reconstruction"] == pytest.approx(np.mean(shares[1:fit]))
    assert m["folded"]["future"] == pytest.approx(np.mean(shares[fit:]))
    assert "Folded" in table
    # how far the asset turned away from the truth (metrics.orientation_error_deg), 0 at frame 0
    angles = [r["orientation_error_deg"] for r in rows]
    assert angles[0] == pytest.approx(0.0, abs=1e-6) and all(0.0 <= a <= 180.0 for a in angles)
    assert m["orientation_error_deg"]["future"] == pytest.approx(np.mean(angles[fit:]))
    assert m["orientation_error_deg"]["reconstruction"] == pytest.approx(np.mean(angles[1:fit]))
    assert "Orientation error" in table


def test_eval_warns_when_the_asset_folds(tiny_run, tmp_path, monkeypatch):
    import pipeline.evaluate as evaluate_module

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    monkeypatch.setattr(evaluate_module, "folded_fraction", lambda pos, rest, tets: torch.full((len(pos),), 0.25))
    r = invoke("eval", run, "--quiet", "--no-baselines")
    assert r.exit_code == 0, r.output
    assert "warning: the asset folds (25.0 %" in r.output and "global_fold_penalty=1" in r.output
    assert json.loads((run / "eval/metrics.json").read_text())["folded"] == {"reconstruction": 0.25, "future": 0.25}


def test_orientation_error_follows_the_truth_only_where_its_particles_persist():
    from types import SimpleNamespace

    from pipeline.evaluate import orientation

    rng = np.random.default_rng(0)
    rest, particles = torch.from_numpy(rng.uniform(-1, 1, (40, 3))), rng.uniform(-1, 1, (60, 3))
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    tip = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    asset = SimpleNamespace(model=SimpleNamespace(rest_positions=rest))
    # the asset tips 20 degrees in frames 2 and 3 while the truth stays level: 20 there, 0 elsewhere
    anchors = torch.stack([rest, rest + 0.1, rest @ torch.from_numpy(tip).T, rest @ torch.from_numpy(tip).T])
    rows = [{"frame": f} for f in range(4)]
    out = orientation(asset, anchors, [particles] * 4, rows, fit_frames=2)
    assert [r["orientation_error_deg"] for r in rows] == pytest.approx([0, 0, 20, 20], abs=1e-6)
    assert out == pytest.approx({"reconstruction": 0.0, "future": 20.0}, abs=1e-6)
    # no truth, or particles that differ between frames (another dataset's): nothing to follow
    assert orientation(asset, anchors, None, rows, 2) is None
    assert orientation(asset, anchors, [particles, particles[:50], particles, particles], rows, 2) is None


def test_resume_reuses_matching_stages_and_reruns_changed_ones(tiny_data, tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "run.json").read_text())["stages_run"] == []
    # a refine setting changes refine and the stages after it, never the ones before
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--set", "refine_iterations=5")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "run.json").read_text())["stages_run"] == ["refine", "velocity", "global", "dynamic"]
    # a dynamic-stage setting changes only the dynamic stage
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--set", "refine_iterations=5",
               "--iterations", 2)
    assert json.loads((run / "run.json").read_text())["stages_run"] == ["dynamic"]
    before = json.loads((run / "stages/dynamic/fitted.json").read_text())["substeps"]
    # the authors' substep schedule: +50 at every multiple of substeps_raise_every below the
    # iteration count (1-based): with 5 iterations and 2, at iterations 2 and 4
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--set", "refine_iterations=5",
               "--iterations", 5, "--set", "substeps_raise_every=2")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "run.json").read_text())["stages_run"] == ["dynamic"]
    assert json.loads((run / "stages/dynamic/fitted.json").read_text())["substeps"] == before + 100
    # without the global search the dense stage starts from init_* (sgaus 0.1): only it re-runs
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--set", "refine_iterations=5",
               "--iterations", 2, "--set", "global_search=false")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "run.json").read_text())["stages_run"] == ["dynamic"]


def test_a_fit_on_the_penalty_ground_fits_its_restitution_into_the_asset(tiny_data, tiny_run, tmp_path):
    """`--set contact=penalty`: the stages from the velocity on re-run (the model changed), the global
    search fits the ground's restitution, and the asset, its evaluation and its report carry it."""
    from pipeline.asset import load_asset

    run = tmp_path / "penalty"
    shutil.copytree(tiny_run, run)
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--set", "contact=penalty")
    assert r.exit_code == 0, r.output
    assert "the ground's restitution" in r.output
    assert json.loads((run / "run.json").read_text())["stages_run"] == ["velocity", "global", "dynamic"]
    found = json.loads((run / "stages/global/global.json").read_text())
    tried = {e["restitution"] for e in found["evaluations"]}
    assert len(tried) > 1 and all(0.1 <= e <= 1.0 for e in tried)  # CMA-ES moved it within its range
    model = load_asset(run).model
    assert model.contact == "penalty" and model.restitution == pytest.approx(found["restitution"])
    assert "penalty (contact time 5 ms" in (run / "report.html").read_text()
    r = invoke("eval", run, "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((tiny_run / "asset/physics.json").read_text())["model"]["contact"] == "projection"


def test_a_fit_with_a_flat_floor_keeps_it_in_the_asset(tiny_data, tiny_run, tmp_path):
    """`--set contact_floor=flat`: the stages from the velocity on re-run (the model changed), and
    the asset and its report carry the flat floor with the offset the global search chose; a floor
    of another name is one named error."""
    from pipeline.asset import load_asset

    run = tmp_path / "flat"
    shutil.copytree(tiny_run, run)
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--set", "contact_floor=flat")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "run.json").read_text())["stages_run"] == ["velocity", "global", "dynamic"]
    found = json.loads((run / "stages/global/global.json").read_text())
    model = load_asset(run).model
    assert model.contact_floor == "flat" and model.contact_offset == pytest.approx(found["contact_offset"])
    assert "cut flat" in (run / "report.html").read_text()
    assert load_asset(tiny_run).model.contact_floor == "uniform"
    r = invoke("fit", tiny_data, "--out", tmp_path / "bad", *TINY, "--set", "contact_floor=level")
    assert r.exit_code != 0 and "contact_floor must be one of uniform, flat" in r.output


def test_a_fit_from_several_starts_keeps_the_best_scored_and_resumes_within_them(tiny_data, tiny_run, tmp_path,
                                                                                   monkeypatch):
    """`--set dense_start_offsets=0,0.6`: the dynamic stage runs from the global result and from it
    half a decade and more up, each saved as its own stage; the asset holds the start with the
    lowest all-camera score. The start at offset 0 is the one-start fit itself, bit for bit. A fit
    killed during the second start resumes there, and one given a longer list reuses the starts it
    has; bad offsets are named errors."""
    from pipeline.asset import load_asset
    from pipeline.fit import dynamic
    from pipeline.fit.runner import fit

    run = tmp_path / "starts"
    shutil.copytree(tiny_run, run)
    real, calls = dynamic.run, []

    def killed_at_second(*a, **k):
        calls.append(k["desc"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dynamic, "run", killed_at_second)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_data, run, make_settings("tiny", overrides={"dense_start_offsets": "0,0.6"}), resume=True,
            progress=False, log=lambda *_: None)
    monkeypatch.setattr(dynamic, "run", real)
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--set", "dense_start_offsets=0,0.6")
    assert r.exit_code == 0, r.output
    assert calls == ["dynamic_start0", "dynamic_start1"]
    assert json.loads((run / "run.json").read_text())["stages_run"] == ["dynamic_start1", "dynamic"]
    one = json.loads((tiny_run / "stages/dynamic/fitted.json").read_text())
    first = json.loads((run / "stages/dynamic_start0/fitted.json").read_text())
    second = json.loads((run / "stages/dynamic_start1/fitted.json").read_text())
    assert first["log_stiffness"] == one["log_stiffness"] and first["losses"] == one["losses"]
    assert np.mean(second["log_stiffness"]) > np.mean(first["log_stiffness"]) + 0.3
    starts = json.loads((run / "stages/dynamic/fitted.json").read_text())["starts"]
    assert [s["offset"] for s in starts] == [0.0, 0.6]
    assert [s["score"] for s in starts] == [first["score"], second["score"]] and first["score"] != second["score"]
    best = min((first, second), key=lambda d: d["score"])
    assert [s["chosen"] for s in starts] == [best is first, best is second]
    assert load_asset(run).params.log_stiffness.tolist() == pytest.approx(best["log_stiffness"], abs=1e-6)
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--set", "dense_start_offsets=0,0.6")
    assert r.exit_code == 0 and json.loads((run / "run.json").read_text())["stages_run"] == []
    # a start added to the list: the two done are reused, the new one runs, the choice is made again
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--set", "dense_start_offsets=0,0.6,-0.6")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "run.json").read_text())["stages_run"] == ["dynamic_start2", "dynamic"]
    assert len(json.loads((run / "stages/dynamic/fitted.json").read_text())["starts"]) == 3
    for bad in ("0,up", "0,0", "0,9"):
        r = invoke("fit", tiny_data, "--out", tmp_path / "bad", *TINY, "--set", f"dense_start_offsets={bad}")
        assert r.exit_code != 0 and "dense_start_offsets must be" in r.output, r.output


def test_a_start_is_scored_with_the_substeps_its_result_needs(tiny_data, tiny_run):
    """A start's result may blow up at the substeps its last stable step ran with: its score is
    retried with more (and says how many it needed, for the asset), and past max_substeps it is inf,
    so the start loses rather than crashing the fit."""
    import math

    from pipeline.asset import load_asset
    from pipeline.data.datasets import load_dataset
    from pipeline.data.frames import FrameCache
    from pipeline.fit import dynamic
    from taichi_sim.spring_params import SpringParams
    from taichi_sim.spring_rollout import Integrator

    a = load_asset(tiny_run)
    frames = FrameCache(load_dataset(tiny_data), a.info["image_scale"])
    stiff = SpringParams.uniform(a.model.n_anchors, 6.0, float(a.params.kappa), float(a.params.friction_logit))
    n_fit = a.info["fit_frames"]

    def score(substeps, max_substeps):
        return dynamic.score(a.gaussians, a.model, a.binding, a.v0, frames, n_fit,
                             Integrator(frame_dt=a.integrator.frame_dt, substeps=substeps, max_substeps=max_substeps),
                             stiff, 0.05)

    loss, needed = score(4, 500)
    assert math.isfinite(loss) and needed > 4
    assert score(needed, 500) == (loss, needed)  # scored again at what it needed: the same
    assert score(4, needed - 1) == (math.inf, 0)


def test_resume_after_a_kill_mid_stage(tiny_data, tmp_path, monkeypatch):
    from pipeline.fit import velocity
    from pipeline.fit.runner import fit

    run = tmp_path / "killed"
    real = velocity.run

    def killed(*a, **k):
        raise KeyboardInterrupt  # as if the process were stopped during stage 4

    monkeypatch.setattr(velocity, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_data, run, make_settings("tiny"), progress=False, log=lambda *_: None)
    assert RunDir(run).stage_key("refine") is not None
    assert not (run / "stages" / "velocity").exists()  # no half-written stage
    monkeypatch.setattr(velocity, "run", real)
    fit(tiny_data, run, make_settings("tiny"), resume=True, progress=False, log=lambda *_: None)
    assert json.loads((run / "run.json").read_text())["stages_run"] == ["velocity", "global", "dynamic"]


def test_bad_inputs_are_clear_errors(tiny_data, tmp_path):
    # a run written by another version
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"format": "sgaus-run/0"}))
    r = invoke("fit", tiny_data, "--out", other, *TINY)
    assert r.exit_code != 0 and "another version" in r.output and "Traceback" not in r.output
    # a dataset without frame 0 in some view
    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    victim = sorted((broken / "images").iterdir())[1] / "000.png"
    victim.unlink()
    r = invoke("fit", broken, "--out", tmp_path / "r2", *TINY)
    assert r.exit_code != 0 and "000.png" in r.output
    # unknown setting, impossible parameters
    r = invoke("fit", tiny_data, "--out", tmp_path / "r3", *TINY, "--set", "colour=blue")
    assert r.exit_code != 0 and "unknown setting" in r.output
    r = invoke("fit", tiny_data, "--out", tmp_path / "r4", *TINY, "--k", 500)
    assert r.exit_code != 0 and "k_neighbors" in r.output


def test_an_unstable_fit_fails_cleanly_and_keeps_earlier_stages(tiny_data, tiny_run, tmp_path):
    run = tmp_path / "unstable"
    shutil.copytree(tiny_run, run)
    # without the global search the dense stage starts at init_log_stiffness (the search would avoid it)
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--set", "init_log_stiffness=7",
               "--substeps", 5, "--set", "max_substeps=5", "--set", "global_search=false")
    assert r.exit_code != 0
    assert "unstable" in r.output and "Traceback" not in r.output
    for s in ("static", "anchors", "refine"):
        assert (run / "stages" / s / "stage.json").exists()


def test_eval_leaves_the_run_metadata_alone(tiny_run):
    before = (tiny_run / "run.json").read_bytes()
    mtime = (tiny_run / "run.json").stat().st_mtime_ns
    r = invoke("eval", tiny_run, "--quiet")
    assert r.exit_code == 0, r.output
    assert (tiny_run / "run.json").read_bytes() == before
    assert (tiny_run / "run.json").stat().st_mtime_ns == mtime
    m = json.loads((tiny_run / "eval/metrics.json").read_text())
    assert set(m["provenance"]) >= {"asset", "data"}


def test_splat_hull_bounds_the_underside_the_cameras_never_see():
    """Points of a sphere's surface as the Gaussians: grid points inside the sphere are kept, points
    in the wedge below it (inside every silhouette seen from above) and beside it are carved."""
    import math

    import torch

    from pipeline.fit.geometry import grid_points, inside_splat_hull

    gen = torch.Generator().manual_seed(0)
    d = torch.randn(3000, 3, generator=gen)
    surface = 0.1 * d / d.norm(dim=1, keepdim=True) + torch.tensor([0.0, 0.3, 0.0])
    grid = grid_points(torch.tensor([-0.15, 0.12, -0.15]), torch.tensor([0.15, 0.45, 0.15]), 0.01)
    keep = inside_splat_hull(grid, surface, 0.01)
    r = (grid - torch.tensor([0.0, 0.3, 0.0])).norm(dim=1)
    assert bool(keep[r < 0.085].all()), "the inside of the surface must survive (gaps closed)"
    assert not bool(keep[r > 0.12].any()), "nothing a cell and more outside the surface survives"
    below = (grid[:, 1] < 0.18) & (grid[:, [0, 2]].norm(dim=1) < 0.03)  # under the sphere's bottom (0.2)
    assert below.any() and not bool(keep[below].any())
    assert keep.sum() > 0.8 * (4 / 3 * math.pi * 0.1**3) / 0.01**3
