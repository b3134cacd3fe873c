"""`sgaus view`: the scene the viewer draws (no viser needed), the GUI's edits and re-simulation
(viser), and the page rendered by headless Chromium from the `sgaus view` command (viser and
Chromium; `make test-browser` installs both)."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import cli
from conftest import make_asset
from pipeline.asset import Asset, save_asset
from pipeline.data.gaussians import Gaussians
from pipeline.simulate import apply_edits
from pipeline.viewer import (Controls, ViewerUnavailable, wxyz_z_to, build_scene, require_viser, spring_pairs,
                             undirected_springs)

ROOT = Path(__file__).resolve().parents[1]
MAGENTA = (1.0, 0.0, 1.0)


def small_asset(n_gaussians: int = 60, colour=None) -> Asset:
    """A 3 x 3 x 3 lattice of anchors (5 cm apart) 20 cm above the ground, 6 springs each, with
    Gaussians scattered around it; fitted-looking physics."""
    side = torch.linspace(-0.05, 0.05, 3)
    anchors = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    anchors[:, 1] += 0.25
    gen = torch.Generator().manual_seed(1)
    pts = anchors[torch.randint(len(anchors), (n_gaussians,), generator=gen)]
    pts = pts + 0.02 * torch.randn(pts.shape, generator=gen)
    colours = torch.rand(n_gaussians, 3, generator=gen) if colour is None else torch.tensor([colour]).repeat(n_gaussians, 1)
    g = Gaussians(means=pts, log_scales=torch.full((n_gaussians,), math.log(0.015)), colors=colours,
                  opacity_logits=torch.full((n_gaussians,), 3.0))
    return make_asset(anchors, g, 6, 3, 20, velocity=(0.1, 0.0, 0.0), frames=8)


# ------------------------------------------------------------------ no viser needed
def test_scene_counts_shapes_and_frame_range():
    asset = small_asset()
    scene = build_scene(asset, n_frames=6)
    assert (scene.n_gaussians, scene.n_anchors, scene.n_frames) == (60, 27, 6)
    assert scene.frame_range == (0, 5)
    # every directed spring i -> j once as an undirected pair, counted independently here
    nb = asset.model.neighbors.tolist()
    expected = {(min(i, j), max(i, j)) for i, row in enumerate(nb) for j in row}
    assert scene.n_springs == len(expected) == len(scene.springs)
    assert {tuple(p) for p in scene.springs.tolist()} == expected
    assert scene.centres.shape == (6, 60, 3) and scene.anchors.shape == (6, 27, 3)
    assert scene.covariances.shape == (60, 3, 3) and scene.rgbs.shape == (60, 3) and scene.opacities.shape == (60, 1)
    assert np.allclose(scene.covariances, np.eye(3) * 0.015**2, rtol=1e-5, atol=0)
    assert np.allclose(scene.opacities, 1 / (1 + math.exp(-3.0)), atol=1e-6)
    assert np.allclose(scene.anchors[0], asset.model.rest_positions.numpy(), atol=1e-6)
    # the object falls and drifts along +x (v0 = 0.1 m/s) over the frames
    drop = scene.anchors[0, :, 1].mean() - scene.anchors[-1, :, 1].mean()
    assert drop == pytest.approx(0.5 * 9.8 * (5 * 0.03) ** 2, rel=0.05)
    assert scene.centres[-1, :, 0].mean() > scene.centres[0, :, 0].mean() + 0.01
    segs = scene.spring_segments(3)
    assert segs.shape == (len(expected), 2, 3) and np.array_equal(segs[:, 1], scene.anchors[3][scene.springs[:, 1]])
    point, normal = scene.ground
    assert np.allclose(point, 0) and np.allclose(normal, [0, 1, 0])


def test_springs_are_subsampled_when_there_are_many():
    asset = small_asset()
    full = undirected_springs(asset.model.neighbors)
    some = spring_pairs(asset.model.neighbors, max_springs=10)
    assert len(some) == 10 and len(full) > 10
    assert {tuple(p) for p in some.tolist()} <= {tuple(p) for p in full.tolist()}
    assert np.array_equal(some, spring_pairs(asset.model.neighbors, max_springs=10))  # same seed, same springs
    scene = build_scene(asset, n_frames=1, max_springs=10)
    assert len(scene.springs) == 10 and scene.n_springs == len(full) and scene.frame_range == (0, 0)
    with pytest.raises(ValueError, match="frames"):
        build_scene(asset, n_frames=0)


def test_controls_start_at_the_fitted_values_and_map_to_edits():
    asset = small_asset()
    c = Controls.from_asset(asset)
    assert c.gravity == pytest.approx(9.8) and c.ground and c.ground_height == 0.0 and c.frames == 8
    assert c.friction_value == pytest.approx(1.2 / (1 + math.e) - 0.1)
    assert c.velocity == pytest.approx((0.1, 0.0, 0.0))
    same = apply_edits(asset, c.to_edits(asset))  # unchanged controls change nothing
    assert same.model == asset.model and same.integrator == asset.integrator
    assert torch.equal(same.v0, asset.v0) and torch.equal(same.params.log_stiffness, asset.params.log_stiffness)
    assert torch.equal(same.params.friction_logit, asset.params.friction_logit)

    edited = dataclasses.replace(c, gravity_as_vector=True, gravity_vector=(1.0, -2.0, 0.0), ground=False,
                                 friction="sticky", velocity=(0.0, 0.5, 0.0), stiffness_scale=10.0)
    e = edited.to_edits(asset)
    assert e.gravity == (1.0, -2.0, 0.0) and e.no_ground and e.friction == "sticky"
    assert e.velocity == (0.0, 0.5, 0.0) and e.stiffness_scale == 10.0
    assert dataclasses.replace(c, friction="value", friction_value=0.3).to_edits(asset).friction == 0.3
    assert dataclasses.replace(c, ground_height=-0.1).to_edits(asset).ground_height == -0.1
    assert build_scene(asset, 3, edited.to_edits(asset)).ground is None
    with pytest.raises(ValueError, match="friction"):
        dataclasses.replace(c, friction="icy").to_edits(asset)


def test_ground_grid_is_turned_onto_the_ground_normal():
    for normal in ([0.0, 1.0, 0.0], [0.3, 0.8, -0.5], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]):
        n = np.asarray(normal) / np.linalg.norm(normal)
        w, x, y, z = wxyz_z_to(n)
        assert w * w + x * x + y * y + z * z == pytest.approx(1.0)
        # the rotation matrix's third column is where +z goes
        z_image = np.array([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)])
        assert np.allclose(z_image, n, atol=1e-12)


def test_view_without_viser_is_one_clear_error(tmp_path, monkeypatch):
    save_asset(tmp_path / "run" / "asset", small_asset())
    monkeypatch.setitem(sys.modules, "viser", None)  # `import viser` now raises ImportError
    with pytest.raises(ViewerUnavailable):
        require_viser()
    res = CliRunner().invoke(cli, ["view", str(tmp_path / "run")])
    assert res.exit_code == 1
    assert res.output.strip() == "Error: the viewer needs viser: pip install 'sgaus[viewer]'"


def test_sgaus_never_imports_viser_outside_the_viewer():
    code = ("import sys, cli, pipeline.simulate, pipeline.fit, pipeline.evaluate, pipeline.viewer; "
            "from click.testing import CliRunner; CliRunner().invoke(cli.cli, ['--help']); "
            "print('viser' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


# ------------------------------------------------------------------ viser
def test_viewer_gui_resimulates_with_edits_and_plays():
    pytest.importorskip("viser", reason="viser is not installed (pip install 'sgaus[viewer]')")
    from pipeline.viewer import start_viewer

    viewer = start_viewer(small_asset(), port=0, n_frames=5, log=lambda *_: None)
    try:
        assert viewer.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{viewer.port}/", timeout=10) as page:  # the client is served
            assert page.status == 200 and b"<html" in page.read().lower()
        assert viewer.frame_slider.max == 4 and viewer.ground_grid.visible
        viewer.show_frame(4)
        assert np.array_equal(viewer.splats.centers, viewer.scene.centres[4])
        assert np.array_equal(viewer.anchor_cloud.points, viewer.scene.anchors[4])

        # no gravity, no ground, 7 frames: the slider grows and the object only drifts sideways
        c = dataclasses.replace(viewer.read_controls(), gravity=0.0, ground=False, frames=7)
        assert viewer.simulate(c)
        assert viewer.frame_slider.max == 6 and viewer.scene.ground is None and not viewer.ground_grid.visible
        assert np.allclose(viewer.scene.anchors[:, :, 1], viewer.scene.anchors[0, :, 1], atol=1e-6)
        assert "7 frames" in viewer.info.content

        # GUI callbacks run in viser's worker threads: simulate from one, with a stronger gravity
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            hyper = dataclasses.replace(viewer.read_controls(), gravity=19.6, ground=True, frames=5)
            assert pool.submit(viewer.simulate, hyper).result(timeout=120)
        drop = viewer.scene.anchors[0, :, 1].mean() - viewer.scene.anchors[-1, :, 1].mean()
        assert drop == pytest.approx(0.5 * 19.6 * (4 * 0.03) ** 2, rel=0.05)
        assert viewer.frame_slider.max == 4 and viewer.ground_grid.visible

        # one simulation at a time
        with viewer._simulating:
            assert not viewer.simulate(hyper) and "already running" in viewer.status.content

        # an impossible edit is reported in the GUI and keeps the frames shown
        before = viewer.scene
        bad = dataclasses.replace(viewer.read_controls(), ground=True, ground_height=1.0)
        assert not viewer.simulate(bad)
        assert viewer.scene is before and "above the object" in viewer.status.content

        # reset puts the fitted values back into the controls
        fitted = Controls.from_asset(viewer.asset)
        viewer.set_controls(fitted)
        shown = viewer.read_controls()
        assert shown.friction_value == pytest.approx(fitted.friction_value, abs=0.005)  # the slider's step is 0.01
        assert dataclasses.replace(shown, friction_value=fitted.friction_value) == fitted

        # play advances the frame slider and wraps around
        viewer.frame_slider.value = 0
        assert viewer.frame == 0
        viewer.play.value = True
        seen = []
        for _ in range(6):
            viewer._next_tick = 0.0
            viewer.tick()
            seen.append(viewer.frame)
            assert np.array_equal(viewer.splats.centers, viewer.scene.centres[viewer.frame])
        assert seen == [1, 2, 3, 4, 0, 1]
    finally:
        viewer.stop()


def test_view_of_a_missing_or_empty_run_is_one_clear_error(tmp_path):
    pytest.importorskip("viser", reason="viser is not installed (pip install 'sgaus[viewer]')")
    res = CliRunner().invoke(cli, ["view", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and res.output.strip() == f"Error: no such run directory: {tmp_path / 'nothing'}"
    res = CliRunner().invoke(cli, ["view", str(tmp_path)])
    assert res.exit_code == 1 and "holds no fitted asset" in res.output and len(res.output.strip().splitlines()) == 1
    save_asset(tmp_path / "run" / "asset", small_asset())
    res = CliRunner().invoke(cli, ["view", str(tmp_path / "run"), "--frames", "0"])
    assert res.exit_code == 2 and "--frames must be at least 1" in res.output


# ------------------------------------------------------------------ viser + headless Chromium
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


def test_viewer_page_renders_in_headless_chromium(tmp_path):
    pytest.importorskip("viser", reason="viser is not installed (pip install 'sgaus[viewer]')")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or `make test-browser`)")
    import imageio.v2 as imageio

    save_asset(tmp_path / "run" / "asset", small_asset(colour=MAGENTA))
    env = dict(os.environ, SGAUS_ARCH="cpu", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "view", str(tmp_path / "run"), "--port", "0",
                             "--frames", "4"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url, lines = None, []
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"viewer at (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert url, "the viewer did not start:\n" + "".join(lines)

        shot = tmp_path / "shot.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                        "--virtual-time-budget=10000", f"--screenshot={shot}", "--window-size=800,600", url],
                       cwd=tmp_path, capture_output=True, timeout=120, check=True)
        img = imageio.imread(shot)[..., :3].astype(np.float64)
        assert img.shape[:2] == (600, 800)
        assert img.std() > 10, "the screenshot is blank"
        # the splats themselves are drawn: magenta pixels (the GUI has none) in the 3D view
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        magenta = (r > 120) & (b > 120) & (g < 0.6 * np.minimum(r, b))
        assert magenta.sum() > 200, f"only {int(magenta.sum())} magenta pixels: the Gaussians were not drawn"

        proc.send_signal(signal.SIGINT)  # Ctrl-C stops the server cleanly
        rest = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, rest
        assert "stopping the viewer" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
