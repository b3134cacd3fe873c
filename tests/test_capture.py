"""Real captures (issue 11): COLMAP reading, both capture layouts, their failure modes, the
registration, Eq. 19, the --static-ply import and `sgaus fit` / `sgaus eval` on a capture, all on
a synthetic capture written by `sgaus generate-mpm --capture real` (ground truth kept aside)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import invoke
from taichi_sim.errors import SgausError

FIT = ["--preset", "tiny", "--quiet", "--set", "image_size=160", "--set", "static_iterations=200",
       "--set", "registration_iterations=30", "--set", "registration_hypotheses=12", "--set", "iterations=4",
       "--set", "global_cma_generations=2", "--set", "velocity_iterations=40", "--set", "refine_iterations=300"]


@pytest.fixture(scope="session")
def capture(tmp_path_factory):
    """A Spot mesh thrown sideways onto a slippery floor (it still slides in the future frames): 50
    static photos (128 x 96), 3 views of 160 x 90, 16 frames (11 fitted: contact at frame 5)."""
    out = tmp_path_factory.mktemp("capture") / "spot"
    r = invoke("generate-mpm", "--capture", "real", "--mesh", Path(__file__).parent.parent / "assets/meshes/spot.obj",
               "--views", 3, "--frames", 16, "--fit-frames", 11, "--resolution", 160, "--grid", 32,
               "--drop-height", 0.1, "--velocity", "0.6,0,0", "--friction", 0.1, "--static-views", 50, "--static-resolution", 128,
               "--seed", 3, "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def prepared(capture, tmp_path_factory):
    from pipeline.data.capture import prepare_capture, read_capture

    return prepare_capture(read_capture(capture), tmp_path_factory.mktemp("prep") / "capture", 0)


def _truth(capture):
    from pipeline.fit.registration import Similarity

    gt = json.loads((capture / "ground_truth" / "similarity.json").read_text())
    return Similarity.from_json(gt["static_to_dynamic"]), gt


# ------------------------------------------------------------------ COLMAP
def _model(tmp_path, model: str, params: list):
    import pycolmap

    r = pycolmap.Reconstruction()
    r.add_camera_with_trivial_rig(pycolmap.Camera(model=model, width=320, height=240, params=params, camera_id=1))
    rng = np.random.default_rng(0)
    for i in range(4):
        q = rng.normal(size=4)
        r.add_image_with_trivial_frame(pycolmap.Image(name=f"im{i}.jpg", camera_id=1, image_id=i + 1),
                                       pycolmap.Rigid3d(pycolmap.Rotation3d(q / np.linalg.norm(q)),
                                                        rng.normal(size=3)))
    r.add_point3D(np.array([0.1, 0.2, 0.3]), pycolmap.Track(), np.array([10, 20, 30], np.uint8))
    for kind in ("bin", "txt"):
        (tmp_path / kind).mkdir()
        (r.write_binary if kind == "bin" else r.write_text)(str(tmp_path / kind))
    return r


@pytest.mark.parametrize("model,params", [
    ("PINHOLE", [300.0, 310.0, 160.5, 119.0]), ("SIMPLE_PINHOLE", [280.0, 161.0, 121.0]),
    ("SIMPLE_RADIAL", [300.0, 160.0, 120.0, -0.05]), ("RADIAL", [300.0, 160.0, 120.0, -0.05, 0.01]),
    ("OPENCV", [300.0, 305.0, 158.0, 122.0, -0.04, 0.01, 0.002, -0.001])])
def test_colmap_models_read_back_and_project_alike(tmp_path, model, params):
    import pycolmap

    from pipeline.data.cameras import Cameras
    from pipeline.data.capture import undistort_points
    from pipeline.data.colmap import read_model

    ref = _model(tmp_path, model, params)
    for kind in ("bin", "txt"):
        m = read_model(tmp_path / kind)
        assert set(m.images) == set(ref.images) and len(m.points) == 1
        np.testing.assert_allclose(m.points[0], [0.1, 0.2, 0.3])
        cam = m.cameras[1]
        assert cam.model == model and (cam.width, cam.height) == (320, 240)
        np.testing.assert_allclose(cam.K(), ref.camera(1).calibration_matrix(), atol=1e-12)
        X = np.array([0.05, -0.03, 0.02])
        for image_id, im in m.images.items():
            pose = ref.image(image_id).cam_from_world()
            np.testing.assert_allclose(im.viewmat()[:3], pose.matrix(), atol=1e-12)
            xc = pose * X
            if xc[2] <= 0.1:
                continue
            pixel = ref.camera(1).img_from_cam(xc[None])[0]  # through COLMAP's own model, with its distortion
            cams = Cameras(torch.tensor(im.viewmat()[None]), torch.tensor(cam.K()[None]), 320, 240)
            uv, _z = cams.project(torch.tensor(X[None], dtype=torch.float32))
            ours = undistort_points(pixel[None], cam.K(), cam.distortion())[0]  # the undistorted image's pixel
            np.testing.assert_allclose(ours, uv[0, 0].numpy(), atol=2e-3)


def test_colmap_refuses_fisheye_and_missing_models(tmp_path):
    from pipeline.data.colmap import read_model

    _model(tmp_path, "OPENCV_FISHEYE", [300.0, 300.0, 160.0, 120.0, 0.1, 0.0, 0.0, 0.0])
    for kind in ("bin", "txt"):
        with pytest.raises(SgausError, match="OPENCV_FISHEYE is not supported"):
            read_model(tmp_path / kind)
    with pytest.raises(SgausError, match="no COLMAP model"):
        read_model(tmp_path)


# ------------------------------------------------------------------ layouts
def test_both_layouts_read_the_same_capture(capture, tmp_path):
    from pipeline.data.capture import read_capture

    ours, theirs = read_capture(capture), read_capture(capture, layout="spring-gaus")
    assert ours.layout == "capture.json" and theirs.layout == "spring-gaus"
    assert [v.name for v in ours.views] == [v.name for v in theirs.views] and len(ours.views) == 3
    assert ours.n_frames == theirs.n_frames == 16 and ours.fit_frames == 11
    assert ours.views[0].width * 9 == ours.views[0].height * 16
    for a, b in zip(ours.views, theirs.views):
        np.testing.assert_allclose(a.K, b.K, atol=1e-9)
        np.testing.assert_allclose(a.dist, b.dist)
        np.testing.assert_allclose(a.viewmat, b.viewmat, atol=1e-6)
    assert len(ours.static) == len(theirs.static) == 50
    for a, b in zip(ours.static, theirs.static):  # text model vs binary model
        np.testing.assert_allclose(a.viewmat, b.viewmat, atol=1e-9)
        np.testing.assert_allclose(a.K, b.K)
    assert ours.gravity == (0.0, 0.0, 9.8) and theirs.ground_normal == (0.0, 0.0, -1.0)
    # the converter's capture.json reads back as the same capture
    r = invoke("import-capture", capture, "--out", tmp_path / "conv")
    assert r.exit_code == 0, r.output
    conv = read_capture(tmp_path / "conv")
    assert conv.n_frames == 16 and conv.fit_frames == theirs.fit_frames
    for a, b in zip(conv.views, theirs.views):
        np.testing.assert_allclose(a.K, b.K, atol=1e-9)
        np.testing.assert_allclose(a.viewmat, b.viewmat, atol=1e-9)


def test_authors_intrinsics_rule_without_a_camera_matrix(capture, tmp_path):
    """Their cameras_calib.json holds only rvecs/tvecs: K is the static focal length scaled by the
    image sizes, the principal point at the centre, no distortion."""
    from pipeline.data.capture import read_capture
    from pipeline.data.colmap import read_model

    def strip(d):
        (d / "capture.json").unlink()
        _set_json(d / "dynamic/cameras_calib.json",
                  lambda doc: [entry.pop(k) for entry in doc.values() for k in ("mtx", "dist")])
    cap = read_capture(_edit(capture, tmp_path, strip))
    static_cam = read_model(capture / "static/colmap/object").cameras[1]
    for v in cap.views:
        f = static_cam.K()[0, 0]
        np.testing.assert_allclose(v.K, [[f * v.width / static_cam.width, 0, v.width / 2],
                                         [0, f * v.height / static_cam.height, v.height / 2], [0, 0, 1]])
        assert not np.any(v.dist)


def test_prepared_views_are_undistorted_and_synchronised(capture, prepared):
    """Ground-truth surface particles project inside the prepared masks of every view and frame
    (the distortion removed, the sync offsets applied), and inside every static view's mask."""
    from pipeline.data.datasets import load_dataset
    from pipeline.fit.geometry import lookup_pixels

    sim, _gt = _truth(capture)
    static, dyn = load_dataset(prepared[0]), load_dataset(prepared[1])
    assert dyn.n_frames == 16 and dyn.scene.gravity == (0.0, 0.0, 9.8) and dyn.scene.fit_frames == 11
    for f in (0, 7, 15):
        z = np.load(capture / "ground_truth" / "particles" / f"{f:03d}.npz")
        x = torch.tensor(z["x"][z["surface"]])
        values, inside = lookup_pixels(dyn.frame(f)[..., 3:4], dyn.cameras, x)
        assert bool(inside.all()) and float((values[..., 0] > 0.5).float().mean()) > 0.97, f
    z = np.load(capture / "ground_truth" / "particles" / "000.npz")
    x = torch.tensor(z["x"][z["surface"]]).double()
    x_static = ((x - torch.tensor(sim.translation)) @ torch.tensor(sim.rotation)) / sim.scale
    values, inside = lookup_pixels(static.frame(0)[..., 3:4], static.cameras, x_static.float())
    assert float((values[..., 0] > 0.5).float()[inside].mean()) > 0.97


def _edit(capture, tmp_path, fn):
    dst = tmp_path / "cap"
    shutil.copytree(capture, dst)
    fn(dst)
    return dst


def _set_json(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("case,message", [
    ("missing_mask", "no mask for the static image 'IMG_0007.JPG'"),
    ("model_without_image", "lists image 'IMG_0003.JPG', which is not in"),
    ("short_video", "has 16 frames after its offset, fewer than the 20 frames asked for"),
    ("unsynchronised", "unequal lengths after their offsets"),
    ("calibration_shape", "'rvec' must be 3 or 3x1 or 1x3, got shape (2,)"),
    ("authors_calibration_shape", "'rvec' must be 3 or 3x1 or 1x3, got shape (4,)"),
    ("few_masks", "18 frames but only 12 masks"),
])
def test_capture_failures_are_one_line_and_write_nothing(capture, tmp_path, case, message):
    def missing_mask(d):
        (d / "static/masks/object/IMG_0007.png").unlink()

    def model_without_image(d):
        (d / "static/images/object/IMG_0003.JPG").unlink()

    def short_video(d):
        _set_json(d / "capture.json", lambda doc: doc.update(frames=20))

    def unsynchronised(d):
        _set_json(d / "capture.json", lambda doc: (doc.pop("frames"), doc["views"][1].update(offset=0)))

    def calibration_shape(d):
        _set_json(d / "capture.json", lambda doc: doc["views"][0].update(rvec=[0.1, 0.2]))

    def authors_calibration_shape(d):
        (d / "capture.json").unlink()
        _set_json(d / "dynamic/cameras_calib.json", lambda doc: next(iter(doc.values())).update(rvecs=[1, 2, 3, 4]))

    def few_masks(d):
        name = json.loads((d / "capture.json").read_text())["views"][1]["name"]
        for p in sorted((d / "dynamic/videos_masks" / name).iterdir())[12:]:
            p.unlink()

    src = _edit(capture, tmp_path, locals()[case])
    out = tmp_path / "run"
    r = invoke("fit", src, "--out", out, "--quiet")
    assert r.exit_code == 1, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last, r.output
    assert "Traceback" not in r.output and not out.exists()


# ------------------------------------------------------------------ losses
def test_eq19_terms():
    from pipeline.fit.capture_loss import CaptureLoss, PerceptualLoss

    a = torch.zeros(2, 32, 48, 3)
    a[:, 8:20, 10:24] = 1.0
    b = torch.roll(a, shifts=6, dims=2)  # 6 px to the right = 6/48 image widths
    plain = CaptureLoss(0.8, 1.0, 0.1, None)
    assert float(plain(a, a)) == pytest.approx(0.0, abs=1e-6)
    t = plain.terms(a, b)
    assert float(t["center"]) == pytest.approx(6 / 48, rel=1e-5) and "percep" not in t
    assert float(plain(a, b)) == pytest.approx(float(t["image"]) + 6 / 48, rel=1e-5)
    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU())
    full = CaptureLoss(0.8, 1.0, 0.1, PerceptualLoss(small, taps=(1, 4)))
    assert float(full.terms(a, a)["percep"]) == 0.0
    pred = b.clone().requires_grad_(True)
    t = full.terms(pred, a)
    assert float(t["percep"]) > 0
    full(pred, a).backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0


def test_vgg_weights_are_read_never_downloaded(tmp_path):
    from pipeline.fit.capture_loss import capture_loss, load_vgg16_features, vgg16_features

    lines = []
    loss = capture_loss(0.8, 1.0, 0.1, None, lines.append)
    assert loss.perceptual is None and len(lines) == 1 and "--vgg-weights" in lines[0]
    torch.manual_seed(0)
    net = vgg16_features()
    state = {f"features.{k}": v for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "vgg16.pth")
    loaded = load_vgg16_features(tmp_path / "vgg16.pth")
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded(x), net(x))
    assert capture_loss(0.8, 1.0, 0.1, str(tmp_path / "vgg16.pth"), lines.append).perceptual is not None
    del state["features.14.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(SgausError, match="features.14.weight"):
        load_vgg16_features(tmp_path / "bad.pth")


# ------------------------------------------------------------------ registration
def _true_static_gaussians(capture):
    """Gaussians at the ground truth's frame-0 surface particles, in the static capture's frame,
    as the generator splats them: a perfect static stage."""
    from pipeline.data.gaussians import Gaussians

    sim, gt = _truth(capture)
    z = np.load(capture / "ground_truth" / "particles" / "000.npz")
    x = torch.tensor(z["x"][z["surface"]]).double()
    x_static = ((x - torch.tensor(sim.translation)) @ torch.tensor(sim.rotation)) / sim.scale
    spacing = 1.0 / 64  # grid 32: particle spacing dx / 2
    n = len(x_static)
    return Gaussians(x_static.float(), torch.full((n,), math.log(0.7 * spacing / sim.scale)), torch.full((n, 3), 0.5),
                     torch.full((n,), 3.0))


def registration_errors(found, truth, gt) -> tuple[float, float, float]:
    """(rotation error in degrees, relative scale error, error of the object's mapped centre in
    object sizes)."""
    from pipeline.fit.registration import rotation_angle_deg

    c = np.asarray(gt["object_center_static"])
    moved = found.scale * found.rotation @ c + found.translation
    true = truth.scale * truth.rotation @ c + truth.translation
    return (rotation_angle_deg(found.rotation, truth.rotation), found.scale / truth.scale - 1,
            float(np.linalg.norm(moved - true)) / gt["object_size"])


def test_registration_recovers_the_hidden_similarity(capture, prepared):
    from pipeline.data.datasets import load_dataset
    from pipeline.fit.registration import RegistrationSettings, register

    truth, gt = _truth(capture)
    dyn = load_dataset(prepared[1])
    g = _true_static_gaussians(capture)
    r = register(g, dyn.cameras, dyn.frame(0)[..., 3:4], RegistrationSettings(), progress=False)
    rot, scale, trans = registration_errors(r.similarity, truth, gt)
    print(f"registration errors: rotation {rot:.2f} deg, scale {100 * scale:+.2f} %, translation "
          f"{100 * trans:.2f} % of the size (initial guess: {registration_errors(r.initial, truth, gt)})")
    assert rot < 2.0 and abs(scale) < 0.02 and trans < 0.02


def test_ground_at_rest_is_read_and_estimated(capture, prepared, tmp_path):
    """capture.json "ground": "rest" (a board that was not on the floor): the normal is against
    gravity, the converter keeps "rest", and the plane the fit estimates (the static Gaussians
    registered onto the last frame's masks, the object lying on the floor) is near the true floor,
    the board's plane z = 0 of this capture. The estimate places the undeformed shape rigidly, so it
    comes out low by about the object's sag at rest: this Spot (E = 5e4, 0.38 units across) sags
    2.5 cm (its particles against the rigid shape best fitted to them), and the plane was measured
    3.8 cm low, 10 % of its size; the bound is 12 %."""
    from pipeline.data.capture import GROUND_AT_REST, read_capture, write_capture_json
    from pipeline.data.datasets import load_dataset
    from pipeline.fit.registration import RegistrationSettings, rest_ground

    src = _edit(capture, tmp_path, lambda d: _set_json(d / "capture.json", lambda doc: doc.update(ground="rest")))
    cap = read_capture(src)
    assert cap.ground_source == GROUND_AT_REST and cap.ground_normal == (0.0, 0.0, -1.0)  # gravity +z (into the floor)
    assert json.loads(write_capture_json(cap, tmp_path / "conv").read_text())["ground"] == "rest"
    _set_json(src / "capture.json", lambda doc: doc.update(ground="floor"))
    with pytest.raises(SgausError, match="'ground' must be {point, normal}, \"board\" or \"rest\", got 'floor'"):
        read_capture(src)

    _, gt = _truth(capture)
    dyn = load_dataset(prepared[1])
    last = dyn.n_frames - 1
    point, r = rest_ground(_true_static_gaussians(capture), dyn.cameras, dyn.frame(last)[..., 3:4], cap.ground_normal,
                           RegistrationSettings(), progress=False)
    err = -float(point[2])  # height above the true floor z = 0 (up is -z)
    print(f"rest ground: {1000 * err:+.1f} mm off the floor ({100 * abs(err) / gt['object_size']:.2f} % of the size)")
    assert abs(err) < 0.12 * gt["object_size"]


def test_a_capture_fit_takes_the_run_lock(capture, tmp_path):
    """A second writer of a capture's run is refused at once with one line naming the holder."""
    import subprocess
    import sys
    import time

    from pipeline.data.rundir import RUN_FORMAT
    from pipeline.data.runlock import lock_info

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": RUN_FORMAT}))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.data.runlock import RunLock; "
                               "RunLock(sys.argv[1], 'sgaus fit').acquire(); time.sleep(600)", str(run)],
                              cwd=Path(__file__).parent.parent)
    try:
        deadline = time.monotonic() + 60
        while (lock_info(run) or {}).get("pid") != holder.pid:
            assert holder.poll() is None and time.monotonic() < deadline, "the holder never took the lock"
            time.sleep(0.05)
        r = invoke("fit", capture, "--out", run, "--resume", *FIT)
        lines = [ln for ln in r.output.splitlines() if ln.strip() and ln.startswith("Error")]
        assert r.exit_code != 0 and "Traceback" not in r.output
        assert len(lines) == 1 and f"pid {holder.pid} on " in lines[0], r.output
        assert sorted(p.name for p in run.iterdir()) == [".sgaus.lock", ".sgaus.lock.json", "run.json"]
    finally:
        holder.kill()
        holder.wait()


def test_static_ply_import_keeps_the_render(capture, prepared, tmp_path):
    """An anisotropic, rotated 3DGS (SH degree 3) of the object imports as isotropic Gaussians that
    render close to it; load_ply alone still refuses it."""
    from pipeline.data.datasets import load_dataset
    from pipeline.data.frames import FrameCache
    from pipeline.data.gaussians import SH_C0, load_ply
    from pipeline.data.splat_import import import_splats, read_splat_ply

    g = _true_static_gaussians(capture)
    n = len(g)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(n, 4, generator=gen)
    log_s = g.log_scales[:, None] + torch.tensor([0.5, 0.0, -0.5]) + 0.1 * torch.randn(n, 3, generator=gen)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in range(45)],
             "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    table = np.zeros(n, dtype=[(k, "<f4") for k in names])
    for i, k in enumerate("xyz"):
        table[k] = g.means[:, i].numpy()
    # the colour a trained model would hold: the mean of the static photos under each centre
    from pipeline.fit.geometry import lookup_pixels

    static = load_dataset(prepared[0])
    values, inside = lookup_pixels(static.frame(0)[..., :3], static.cameras, g.means)
    colours = (values * inside[..., None]).sum(0) / inside.sum(0).clamp_min(1)[:, None]
    for i in range(3):
        table[f"f_dc_{i}"] = ((colours[:, i] - 0.5) / SH_C0).numpy()
        table[f"scale_{i}"] = log_s[:, i].numpy()
    table["opacity"] = 3.0
    for i in range(4):
        table[f"rot_{i}"] = q[:, i].numpy()
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n%send_header\n" % (
        n, "".join(f"property float {k}\n" for k in names))
    path = tmp_path / "point_cloud.ply"
    path.write_bytes(header.encode() + table.tobytes())
    with pytest.raises(SgausError, match="rotated anisotropic"):
        load_ply(path)
    splats = read_splat_ply(path)
    lines = []
    iso, report = import_splats(splats, FrameCache(static, 1.0), lines.append)
    print(lines[0])
    chosen = report["conversion"]
    assert report[f"psnr_{chosen}_vs_imported"] == max(report["psnr_single_vs_imported"],
                                                       report["psnr_split_vs_imported"])
    assert report[f"psnr_{chosen}_vs_imported"] > 24  # the render barely changes
    assert report[f"psnr_{chosen}"] > report["psnr_imported"] - 1.0  # nor its match with the photos
    assert len(iso) >= n and iso.isotropic


# ------------------------------------------------------------------ fit and eval
@pytest.mark.slow
def test_fit_and_eval_a_capture(capture, tmp_path):
    run = tmp_path / "run"
    r = invoke("fit", capture, "--out", run, *FIT)
    assert r.exit_code == 0, r.output
    assert "perceptual loss left out" in r.output
    for name in ("registration.png", "ground.png", "asset/physics.json", "capture/dynamic/transforms.json"):
        assert (run / name).is_file(), name
    reg = json.loads((run / "stages/registration/registration.json").read_text())
    from pipeline.fit.registration import Similarity

    truth, gt = _truth(capture)
    rot, scale, trans = registration_errors(Similarity.from_json(reg["similarity"]), truth, gt)
    print(f"fit registration errors (static stage's Gaussians): rotation {rot:.2f} deg, scale {100 * scale:+.2f} %, "
          f"translation {100 * trans:.2f} % of the size")
    assert rot < 2.0 and abs(scale) < 0.02 and trans < 0.02
    r = invoke("eval", run, "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((run / "eval/metrics.json").read_text())
    hold = m["baselines"]["hold"]["future"]
    print("reconstruction:", m["reconstruction"], "future:", m["future"], "hold:", hold)
    assert m["future"]["cd"] is not None and m["future"]["mask_iou"] is not None and "single_k" not in m["baselines"]
    assert all(math.isfinite(m["future"][k]) for k in ("cd", "mask_iou"))
    # the fitted frames are reproduced (measured: CD 0.28-0.30, mask IoU 0.89). Whether the future
    # beats freezing the object is not asserted: on this scene it turns on a few hundredths of a
    # decade of stiffness (one fit's asset: future CD 0.71 / 0.85 / 1.73 / 1.80 at log10 k -0.07 /
    # 0 / +0.035 / +0.07 against hold's 1.2-1.5; a refit differing only in floating-point summation
    # order moved log10 k by 0.07), a knife edge, not a property (see the identification benchmark)
    assert m["reconstruction"]["cd"] < 1.0 and m["reconstruction"]["mask_iou"] > 0.8

    # a fit whose last stages were lost resumes from what the earlier ones saved: the same asset, bitwise
    again = tmp_path / "again"
    shutil.copytree(run, again)
    for stage in ("velocity", "global", "dynamic"):
        shutil.rmtree(again / "stages" / stage)
    r = invoke("fit", capture, "--out", again, "--resume", *FIT)
    assert r.exit_code == 0, r.output
    assert json.loads((again / "run.json").read_text())["stages_run"] == ["velocity", "global", "dynamic"]
    for name in ("gaussians.ply", "anchors.npz"):
        assert (again / "asset" / name).read_bytes() == (run / "asset" / name).read_bytes(), name
    physics = [json.loads((r / "asset/physics.json").read_text()) for r in (run, again)]
    for doc in physics:  # the prepared dataset it names lies in each run
        assert doc["info"].pop("data").endswith("capture/dynamic")
    assert physics[0] == physics[1]  # every number identical (JSON floats keep every bit)
