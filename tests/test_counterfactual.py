"""Counterfactual evaluation: `generate-mpm --variant-of` records the fitted object under other
conditions, and `sgaus eval RUN --data OTHER` predicts that recording with the fitted asset
(tiny scenes: the tiny_data sphere, 4 views of 48 px, 10 frames; copies of the tiny_run fixture)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import invoke
from pipeline.generate import GENERATOR_VERSION
from pipeline.data.scene import load_particles

KEYS = {"cd", "emd", "psnr", "ssim"}


def _variant(tiny_data, tmp_path_factory, name, *changes):
    out = tmp_path_factory.mktemp("variants") / name
    r = invoke("generate-mpm", "--variant-of", tiny_data, *changes, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def thrown(tiny_data, tmp_path_factory):
    """tiny_data's sphere thrown sideways at 0.4 m/s."""
    return _variant(tiny_data, tmp_path_factory, "thrown", "--velocity", "0.4,0,0")


@pytest.fixture(scope="module")
def dropped(tiny_data, tmp_path_factory):
    """tiny_data's sphere dropped from 12 cm instead of 5 under a weaker gravity."""
    return _variant(tiny_data, tmp_path_factory, "dropped", "--drop-height", 0.12, "--gravity", "0,-5,0")


def _scene(path):
    return json.loads((path / "scene.json").read_text())


def test_a_variant_is_the_same_object_at_rest_under_other_conditions(tiny_data, thrown, dropped):
    base = _scene(tiny_data)
    for variant, changed in ((thrown, ["velocity"]), (dropped, ["gravity", "drop_height"])):
        scene = _scene(variant)
        assert scene["variant_of"] == {"data": str(tiny_data.resolve()), "changed": changed}
        for key in ("material", "seed", "cameras", "n_frames", "frame_dt", "split", "grid"):
            assert scene[key] == base[key], key
        assert {k: v for k, v in scene["object"].items() if k != "center"} == \
            {k: v for k, v in base["object"].items() if k != "center"}
    assert _scene(dropped)["object"]["center"] == pytest.approx(np.add(base["object"]["center"], [0, 0.07, 0]))
    assert _scene(thrown)["velocity"] == [0.4, 0.0, 0.0] and _scene(thrown)["gravity"] == base["gravity"]
    assert _scene(dropped)["gravity"] == [0.0, -5.0, 0.0] and _scene(dropped)["velocity"] == base["velocity"]
    rest = np.load(tiny_data / "particles" / "000.npz")
    same = np.load(thrown / "particles" / "000.npz")
    np.testing.assert_array_equal(same["x"], rest["x"])  # identical particles, jitter and all
    np.testing.assert_array_equal(same["surface"], rest["surface"])
    higher = np.load(dropped / "particles" / "000.npz")
    np.testing.assert_allclose(higher["x"], rest["x"] + np.array([0.0, 0.07, 0.0], np.float32), atol=2e-6)
    # ... and the recordings differ after frame 0
    assert not np.allclose(load_particles(thrown, 5), load_particles(tiny_data, 5), atol=1e-2)


def test_variant_of_refuses_what_it_cannot_vary(tiny_data, tmp_path):
    def refused(*args, says):
        r = invoke("generate-mpm", *args, "--out", tmp_path / "out", "--quiet")
        assert r.exit_code != 0 and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and says in r.output, r.output
        assert not (tmp_path / "out").exists()

    (tmp_path / "photos").mkdir()
    refused("--variant-of", tmp_path / "photos", "--velocity", "1,0,0", says="not a dataset written by `sgaus generate-mpm`")
    refused("--variant-of", tiny_data, "--shape", "box", "--velocity", "1,0,0", says="--shape cannot be combined")
    refused("--variant-of", tiny_data, "--velocity", "0,0,0", says="give at least one of")
    refused("--variant-of", tiny_data, "--drop-height", "-1", says="not below the object")
    old = tmp_path / "old"
    shutil.copytree(tiny_data, old)
    scene = _scene(old)
    scene["generator"]["version"] = 1
    (old / "scene.json").write_text(json.dumps(scene))
    refused("--variant-of", old, "--velocity", "1,0,0", says="generator version 1")
    scene["generator"]["version"] = GENERATOR_VERSION
    del scene["options"]
    (old / "scene.json").write_text(json.dumps(scene))
    refused("--variant-of", old, "--velocity", "1,0,0", says="no 'options'")


def test_counterfactual_eval_predicts_the_thrown_sphere(tiny_run, thrown, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "stages" / "dynamic_single_k", ignore_errors=True)  # no single-k refit: said, not made
    before = {p.relative_to(run): p.read_bytes() for p in (run / "eval").rglob("*") if p.is_file()}
    r = invoke("eval", run, "--data", thrown, "--quiet")
    assert r.exit_code == 0, r.output
    out = run / "eval_counterfactual" / "thrown"
    assert f"metrics written to {out}/metrics.json" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["counterfactual"]) == KEYS and all(np.isfinite(v) for v in m["counterfactual"].values())
    assert set(m["baselines"]) == {"hold", "stiffness_x10", "stiffness_x0.1"}
    for res in m["baselines"].values():
        assert set(res) == KEYS and all(np.isfinite(v) for v in res.values())
    assert "single-k refit" in m["skipped"]["single_k"]
    assert "reconstruction" not in m and "future" not in m  # no fitted/future split: no frame of it was fitted
    assert m["conditions"]["changed"] == ["velocity"]
    # the velocity was refitted on the frames before contact, not copied from scene.json
    v = m["v0"]
    assert v["true"] == [0.4, 0.0, 0.0] and v["frames"] == _scene(thrown)["contact_frame"]
    assert v["refitted"] != v["true"] and v["refitted"][0] > 0.2 and v["error"] < 0.4
    # the thrown sphere leaves its first pose: the prediction follows it better than holding still
    assert m["counterfactual"]["cd"] < m["baselines"]["hold"]["cd"]
    per_frame = json.loads((out / "per_frame.json").read_text())
    assert [row["frame"] for row in per_frame["spring_gaus"]] == list(range(10))
    assert per_frame["hold"][0] == per_frame["spring_gaus"][0]  # both start at the placed rest pose
    table = (out / "metrics.md").read_text()
    assert "Counterfactual metrics" in table and "initial velocity (0, 0, 0) -> (0.4, 0, 0) m/s" in table
    assert "v0 refitted" in table and "skipped" in table and "stiffness x10" in table
    assert list(out.glob("video_*.mp4"))
    # RUN/eval is never touched
    assert before == {p.relative_to(run): p.read_bytes() for p in (run / "eval").rglob("*") if p.is_file()}


def test_counterfactual_eval_places_the_asset_at_the_new_drop_height(tiny_run, dropped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    r = invoke("eval", run, "--quiet")  # the plain evaluation, which refits the single-k baseline
    assert r.exit_code == 0, r.output
    plain = (run / "eval" / "metrics.json").read_bytes()
    r = invoke("eval", run, "--data", dropped, "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((run / "eval_counterfactual" / "dropped" / "metrics.json").read_text())
    assert set(m["baselines"]) == {"hold", "single_k", "stiffness_x10", "stiffness_x0.1"} and "skipped" not in m
    assert m["conditions"]["changed"] == ["gravity", "drop_height"]
    assert m["conditions"]["simulated"]["gravity"] == [0.0, -5.0, 0.0]
    # the asset's rest pose sits on the fitted frame 0 up to the fit's own offset; here 7 cm higher
    assert m["rest_pose"]["shift"] == pytest.approx(0.07, abs=0.02)
    assert m["rest_pose"]["chamfer_rms"] == pytest.approx(m["rest_pose"]["chamfer_rms_fitted"], rel=0.05)
    table = (run / "eval_counterfactual" / "dropped" / "metrics.md").read_text()
    assert "gravity (0, -9.8, 0) -> (0, -5, 0) m/s^2" in table and "drop height 0.05 -> 0.12 m" in table
    assert (run / "eval" / "metrics.json").read_bytes() == plain


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """Another object: a box recorded like tiny_data (3 frames)."""
    out = tmp_path_factory.mktemp("other") / "box"
    r = invoke("generate-mpm", "--shape", "box", "--views", 4, "--frames", 3, "--fit-frames", 2, "--resolution", 48,
               "--grid", 24, "--seed", 1, "--drop-height", 0.05, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


def test_counterfactual_eval_refuses_another_object(tiny_run, box, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    r = invoke("eval", run, "--data", box, "--quiet")
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "does not show the fitted object" in r.output and "bounding-box extents differ" in r.output
    assert not (run / "eval_counterfactual").exists()


def test_without_ground_truth_the_visual_hull_places_and_checks_the_asset(tiny_data, tiny_run, dropped, box, tmp_path):
    from pipeline.asset import load_asset
    from pipeline.counterfactual import match_rest_pose
    from pipeline.data.datasets import load_dataset
    from pipeline.data.frames import FrameCache
    from taichi_sim.errors import SgausError

    asset = load_asset(tiny_run)

    def pose(src):
        copy = tmp_path / src.name
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("particles"))  # as a real recording: no particles
        ds = load_dataset(copy)
        return match_rest_pose(asset, ds, FrameCache(ds, 1.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0), src.name)

    same, higher = pose(tiny_data), pose(dropped)
    assert same["reference"] == higher["reference"] == "frame-0 visual hull"
    assert higher["shift"] - same["shift"] == pytest.approx(0.07, abs=0.01)
    assert same["inside_hull"] > 0.95 and same["extent_difference"] < 0.1
    with pytest.raises(SgausError, match="does not show the fitted object"):
        pose(box)
