"""Never lose a user's files, never report a wrong number silently: output directories that are
refused before any work, runs that know whether their fit finished, every file read through its
validator (one line naming the file and field, never a traceback), and files that follow the umask."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time

import numpy as np
import pytest
import torch

from conftest import TINY, invoke, lattice, make_asset
from pipeline.asset import save_asset
from pipeline.data.files import atomic_dir, remove_stale_temporaries, write_json
from pipeline.data.gaussians import Gaussians


def snapshot(root) -> dict:
    """Hash of every file below ``root`` (the tree a command must leave alone)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(r, *words, alone=True):
    """The command failed with one error line holding ``words``, and no traceback; ``alone``:
    nothing else was printed (the problem was found before any work)."""
    out = r.output.strip()
    assert r.exit_code != 0, out
    assert "Traceback" not in out and not isinstance(r.exception, (TypeError, KeyError, IndexError, AttributeError))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], out
    if alone:
        assert len(lines) == 1, out
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def small_run(tmp_path, tiny_data):
    """A run directory holding a small (unfitted) asset of the tiny dataset, marked complete."""
    anchors = lattice(3, 0.02, (-0.02, 0.03, -0.02))
    gen = torch.Generator().manual_seed(0)
    pts = anchors.float() + 0.005 * torch.randn(anchors.shape, generator=gen)
    g = Gaussians(means=pts, log_scales=torch.full((len(pts),), math.log(0.01)),
                  colors=torch.rand(len(pts), 3, generator=gen), opacity_logits=torch.full((len(pts),), 2.0))
    asset = make_asset(anchors, g, 6, 3, 20, frames=10)
    asset.info.update(data=str(tiny_data), fit_frames=7, n_frames=10, image_scale=1.0)
    run = tmp_path / "run"
    save_asset(run / "asset", asset)
    write_json(run / "run.json", {"format": "sgaus-run/1", "status": "complete", "data": str(tiny_data)})
    return run


# ----------------------------------------------------------------------------- 1, 2: output directories
@pytest.mark.parametrize("command", ["simulate", "export", "generate-mpm"])
def test_a_foreign_out_directory_is_refused_and_kept(tmp_path, small_run, command):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "f").write_text("a user's file")
    before = snapshot(tmp_path)
    args = {"simulate": ["simulate", small_run, "--frames", 3, "--size", 32, "--quiet", "--out", foreign],
            "export": ["export", small_run, "--format", "splat-sequence", "--frames", 3, "--out", foreign],
            "generate-mpm": ["generate-mpm", "--views", 2, "--frames", 3, "--resolution", 32, "--grid", 16,
                             "--out", foreign, "--quiet"]}[command]
    one_line_error(invoke(*args), str(foreign), "not empty")
    assert snapshot(tmp_path) == before


def test_a_previous_output_needs_overwrite_and_is_then_replaced(tmp_path, small_run):
    out = tmp_path / "sim"
    args = ["simulate", small_run, "--frames", 3, "--size", 32, "--quiet", "--out", out]
    assert invoke(*args).exit_code == 0
    one_line_error(invoke(*args), "--overwrite")
    r = invoke(*args, "--overwrite", "--velocity", "0.5,0,0")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "simulation.json").read_text())["v0"] == [0.5, 0.0, 0.0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_simulate_into_its_own_run_is_refused(tmp_path, small_run):
    before = snapshot(small_run)
    one_line_error(invoke("simulate", small_run, "--frames", 3, "--out", small_run, "--overwrite"), "reads")
    assert snapshot(small_run) == before
    # a directory inside the run is fine
    assert invoke("simulate", small_run, "--frames", 3, "--size", 32, "--quiet",
                  "--out", small_run / "sims" / "a").exit_code == 0


@pytest.mark.parametrize("where", ["cwd", "under_file"])
def test_bad_out_paths_are_found_before_the_work(tmp_path, small_run, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    out = "." if where == "cwd" else "afile/sim"
    before = snapshot(tmp_path)
    one_line_error(invoke("simulate", small_run, "--frames", 3, "--out", out), out)
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.glob(".*"))


def test_temporaries_of_a_dead_process_are_removed(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    left = tmp_path / f".out.{dead}.abc123.tmp"
    left.mkdir()
    (left / "half.png").write_bytes(b"x")
    mine = tmp_path / f".out.{os.getpid()}.abc123.tmp"
    mine.mkdir()
    assert remove_stale_temporaries(tmp_path) == [left]
    assert not left.exists() and mine.exists()
    with atomic_dir(tmp_path / "other") as d:
        (d / "x").write_text("y")
    assert (tmp_path / "other" / "x").read_text() == "y"


# ----------------------------------------------------------------------------- 3: missing ground truth
def test_missing_ground_truth_frames_are_named(tmp_path, small_run, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "particles" / "005.npz").unlink()
    line = one_line_error(invoke("eval", small_run, "--data", data, "--no-baselines", "--quiet"), "005.npz")
    assert "missing" in line


# ----------------------------------------------------------------------------- 4: NaN in an asset
@pytest.mark.parametrize("command", ["simulate", "export"])
def test_nan_in_an_asset_is_named_and_nothing_is_written(tmp_path, small_run, command):
    path = small_run / "asset" / "anchors.npz"
    arrays = dict(np.load(path))
    arrays["binding_weight"][0, 0] = np.nan
    np.savez(path, **arrays)
    out = tmp_path / "out"
    args = ["simulate", small_run, "--frames", 3, "--out", out] if command == "simulate" else \
        ["export", small_run, "--format", "splat-sequence", "--frames", 3, "--out", out]
    one_line_error(invoke(*args), "anchors.npz", "binding_weight")
    assert not out.exists()


# ----------------------------------------------------------------------------- 5: unfinished fits
def test_an_unfinished_fit_is_refused_until_finished_and_a_refit_invalidates_eval(tmp_path, small_run):
    meta = json.loads((small_run / "run.json").read_text())
    write_json(small_run / "run.json", {**meta, "status": "fitting"})
    for args in (["eval", small_run, "--no-baselines", "--quiet"],
                 ["simulate", small_run, "--frames", 3, "--out", tmp_path / "s"],
                 ["export", small_run, "--format", "splat-sequence", "--out", tmp_path / "e"]):
        one_line_error(invoke(*args), "did not finish", "--resume")
    r = invoke("simulate", small_run, "--frames", 3, "--size", 32, "--quiet", "--out", tmp_path / "s",
               "--last-complete")
    assert r.exit_code == 0, r.output


def test_a_refit_removes_the_evaluation_of_the_old_asset(tmp_path, tiny_data, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert invoke("eval", run, "--no-baselines", "--quiet").exit_code == 0
    assert (run / "eval" / "metrics.json").exists()
    r = invoke("fit", tiny_data, "--out", run, *TINY, "--resume", "--iterations", 2)
    assert r.exit_code == 0, r.output
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert not (run / "eval").exists()


# ----------------------------------------------------------------------------- 6, 7: malformed files
def _edit_json(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _zero_matrix(doc):
    doc["frames"][0]["transform_matrix"] = [[0.0] * 4] * 4


def _zero_focal(doc):
    doc["fl_x"] = doc["fl_y"] = 0.0


def _nan_particles(data):
    arrays = dict(np.load(data / "particles" / "003.npz"))
    arrays["x"][0, 0] = np.nan
    np.savez(data / "particles" / "003.npz", **arrays)


def _truncated_particles(data):
    p = data / "particles" / "003.npz"
    p.write_bytes(p.read_bytes()[:100])


DATA_CASES = {
    "w_text": (lambda d: _edit_json(d / "transforms.json", lambda doc: doc.update(w="wide")), "'w'"),
    "zero_matrix": (lambda d: _edit_json(d / "transforms.json", _zero_matrix), "transform_matrix"),
    "zero_focal": (lambda d: _edit_json(d / "transforms.json", _zero_focal), "'fl_x' must be a positive"),
    "ground_without_normal": (lambda d: _edit_json(d / "scene.json", lambda doc: doc["ground"].pop("normal")),
                              "normal"),
    "contact_frame_text": (lambda d: _edit_json(d / "scene.json", lambda doc: doc.update(contact_frame="abc")),
                           "contact_frame"),
    "nan_particles": (_nan_particles, "003.npz"),
    "truncated_particles": (_truncated_particles, "003.npz"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_malformed_dataset_files_are_named(tmp_path, small_run, tiny_data, case):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    corrupt, word = DATA_CASES[case]
    corrupt(data)
    one_line_error(invoke("eval", small_run, "--data", data, "--no-baselines", "--quiet"), word)
    if case in ("w_text", "zero_matrix", "zero_focal", "ground_without_normal"):
        one_line_error(invoke("fit", data, "--out", tmp_path / "r", *TINY), word)
        assert not (tmp_path / "r").exists()


def test_a_null_image_size_is_read_from_the_images(tmp_path, small_run, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    _edit_json(data / "transforms.json", lambda doc: doc.update(w=None, h=None))
    r = invoke("eval", small_run, "--data", data, "--no-baselines", "--quiet")
    assert r.exit_code == 0, r.output


def test_malformed_settings_and_asset_indices_are_named(tmp_path, small_run):
    (small_run / "settings.yaml").write_text("settings: [unclosed\n")
    one_line_error(invoke("eval", small_run, "--quiet"), "settings.yaml")
    path = small_run / "asset" / "anchors.npz"
    arrays = dict(np.load(path))
    arrays["neighbors"][0, 0] = 10_000
    np.savez(path, **arrays)
    one_line_error(invoke("simulate", small_run, "--out", tmp_path / "s"), "neighbors")


# ----------------------------------------------------------------------------- 8: honest settings
def test_settings_that_do_nothing_or_are_not_finite_are_refused(tmp_path, tiny_data, small_run):
    one_line_error(invoke("fit", tiny_data, "--out", tmp_path / "a", *TINY, "--iterations", 0), "iterations")
    one_line_error(invoke("fit", tiny_data, "--out", tmp_path / "b", *TINY, "--set", "lr_stiffness=inf"),
                   "lr_stiffness")
    one_line_error(invoke("simulate", small_run, "--out", tmp_path / "c", "--frames", 100000000), "--yes")
    for opt, value, word in (("--velocity", "nan,0,0", "--velocity"), ("--stiffness-scale", "inf", "stiffness"),
                             ("--gravity", "nan", "gravity")):
        one_line_error(invoke("simulate", small_run, "--out", tmp_path / "d", opt, value), word)
    assert not any((tmp_path / n).exists() for n in "abcd")


# ----------------------------------------------------------------------------- 8b: non-finite inputs named
SIMULATE_OPTIONS = [
    (["--velocity", "nan,0,0"], "--velocity: nan is not a finite number"),
    (["--velocity", "0,inf,0"], "--velocity: inf is not a finite number"),
    (["--gravity", "nan"], "--gravity: nan is not a finite number"),
    (["--gravity", "0,-inf,0"], "--gravity: -inf is not a finite number"),
    (["--stiffness-scale", "inf"], "--stiffness-scale: inf is not a finite number"),
    (["--stiffness-scale", "nan"], "--stiffness-scale: nan is not a finite number"),
    (["--stiffness-scale", "1e300"], "beyond any simulation"),  # finite, yet 10^303 overflows float32
    (["--ground-height", "nan"], "--ground-height: nan is not a finite number"),
    (["--friction", "nan"], "--friction: nan is not a finite number"),
    (["--fps", "inf"], "--fps: inf is not a finite number"),
]


@pytest.mark.parametrize("args, message", SIMULATE_OPTIONS, ids=[" ".join(a) for a, _m in SIMULATE_OPTIONS])
def test_non_finite_simulate_options_are_named_before_any_simulation(tmp_path, small_run, args, message):
    out = tmp_path / "out"
    invoke("simulate", small_run, "--out", out, "--velocity", "nan,0,0")  # imports warm
    start = time.process_time()
    r = invoke("simulate", small_run, "--frames", 3, "--size", 32, "--quiet", "--out", out, *args)
    assert time.process_time() - start < 1.0  # found before any simulation (none retries to 490 substeps)
    line = one_line_error(r, message, alone=True)
    assert "unstable" not in line
    assert not out.exists()


ASSET_CASES = {
    "nan_stiffness": (lambda d: d["log_stiffness"].__setitem__(3, float("nan")), "'log_stiffness' holds NaN at anchor 3"),
    "huge_stiffness": (lambda d: d["log_stiffness"].__setitem__(3, 50.0), "holds 50 at anchor 3"),
    "inf_kappa": (lambda d: d.update(kappa=float("inf")), "'kappa' must be finite"),
    "nan_v0": (lambda d: d["v0"].__setitem__(1, float("nan")), "'v0' holds NaN at index 1"),
    "nan_gravity": (lambda d: d["model"]["gravity"].__setitem__(0, float("nan")), "'model.gravity' holds NaN"),
    "nan_frames": (lambda d: d["info"].update(n_frames=float("nan")), "'info.n_frames' must be an integer"),
}


@pytest.mark.parametrize("case", sorted(ASSET_CASES))
def test_non_finite_asset_values_are_named_with_their_file(tmp_path, small_run, case):
    change, message = ASSET_CASES[case]
    _edit_json(small_run / "asset" / "physics.json", change)
    out = tmp_path / "out"
    start = time.process_time()
    r = invoke("simulate", small_run, "--frames", 3, "--size", 32, "--quiet", "--out", out)
    assert time.process_time() - start < 1.0
    line = one_line_error(r, "physics.json", message)
    assert "unstable" not in line
    assert not out.exists()


GENERATE_OPTIONS = [["--size", "nan"], ["--drop-height", "inf"], ["--friction", "inf"], ["--frame-dt", "inf"],
                    ["--youngs-modulus", "nan"], ["--velocity", "nan,0,0"], ["--rotate", "0,nan,0"]]


@pytest.mark.parametrize("args", GENERATE_OPTIONS, ids=[" ".join(a) for a in GENERATE_OPTIONS])
def test_non_finite_generate_options_are_named(tmp_path, args):
    out = tmp_path / "data"
    r = invoke("generate-mpm", "--views", 2, "--frames", 3, "--resolution", 32, "--grid", 16, "--quiet",
               "--out", out, *args)
    one_line_error(r, f"{args[0]}: ", "is not a finite number")
    assert not out.exists()


def test_non_finite_fit_and_eval_options_and_files_are_named(tmp_path, tiny_data, small_run):
    fit = ["fit", tiny_data, "--out", tmp_path / "r", *TINY]
    one_line_error(invoke(*fit, "--gravity", "nan,0,0"), "--gravity: nan is not a finite number")
    one_line_error(invoke(*fit, "--ground", "0,0,0,0,inf,0"), "--ground: inf is not a finite number")
    one_line_error(invoke(*fit, "--set", "lr_kappa=nan"), "lr_kappa", "finite")
    config = tmp_path / "cfg.yaml"
    config.write_text("lr_kappa: .nan\n")
    one_line_error(invoke(*fit, "--config", config), str(config), "lr_kappa", "finite")
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    _edit_json(data / "scene.json", lambda doc: doc["gravity"].__setitem__(1, float("nan")))
    one_line_error(invoke("fit", data, "--out", tmp_path / "r", *TINY), "scene.json", "'gravity' holds NaN at index 1")
    assert not (tmp_path / "r").exists()
    one_line_error(invoke("eval", small_run, "--scale", "nan", "--quiet"), "--scale: nan is not a finite number")
    assert not (small_run / "eval").exists()


# ----------------------------------------------------------------------------- 9: modes
def test_written_files_follow_the_umask(tmp_path, small_run):
    old = os.umask(0o022)
    try:
        out = tmp_path / "sim"
        assert invoke("simulate", small_run, "--frames", 2, "--size", 32, "--quiet", "--out", out).exit_code == 0
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o755
    for p in [out / "video.mp4", out / "simulation.json", out / "anchors.npz", out / "frames" / "000.png"]:
        assert (p.stat().st_mode & 0o777) == 0o644, p
    for p in (small_run / "asset").iterdir():
        assert (p.stat().st_mode & 0o077) == (0o644 & 0o077), p


# ----------------------------------------------------------------------------- corruption sweep
def _corruptions(path, seed):
    data = path.read_bytes()
    rng = np.random.default_rng(seed)
    cut = data[: int(rng.integers(1, max(2, len(data) - 1)))]
    flipped = bytearray(data)
    for i in rng.integers(0, len(data), size=8):
        flipped[i] ^= 0xFF
    return {"truncated": cut, "flipped": bytes(flipped)}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["gaussians.ply", "anchors.npz", "physics.json"])
def test_corrupted_asset_files_never_traceback_nor_write_nan(tmp_path, small_run, name, seed):
    path = small_run / "asset" / name
    original = path.read_bytes()
    variants = _corruptions(path, seed)
    if name == "anchors.npz":
        for key in ("rest_positions", "rest_length", "binding_weight"):
            arrays = dict(np.load(path))
            arrays[key] = arrays[key].astype(np.float32)
            arrays[key].reshape(-1)[seed] = np.nan
            tmp = tmp_path / "nan.npz"
            np.savez(tmp, **arrays)
            variants[f"nan_{key}"] = tmp.read_bytes()
    for label, blob in variants.items():
        path.write_bytes(blob)
        out = tmp_path / f"out_{label}"
        r = invoke("export", small_run, "--format", "splat-sequence", "--frames", 3, "--out", out)
        if r.exit_code == 0:
            from pipeline.data.gaussians import load_ply

            for ply in out.glob("*.ply"):
                assert torch.isfinite(load_ply(ply).means).all(), label
        else:
            one_line_error(r, alone=False)
            assert not out.exists(), label
        path.write_bytes(original)


@pytest.mark.parametrize("name", ["transforms.json", "scene.json", "images/cam_00/000.png", "particles/002.npz"])
def test_corrupted_dataset_files_never_traceback(tmp_path, small_run, tiny_data, name):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    path = data / name
    original = path.read_bytes()
    for label, blob in _corruptions(path, 3).items():
        path.write_bytes(blob)
        r = invoke("eval", small_run, "--data", data, "--no-baselines", "--quiet")
        if r.exit_code == 0:
            m = json.loads((small_run / "eval" / "metrics.json").read_text())
            assert all(v is None or math.isfinite(v) for part in ("reconstruction", "future")
                       for v in m[part].values()), label
        else:
            one_line_error(r, alone=False)
        path.write_bytes(original)
