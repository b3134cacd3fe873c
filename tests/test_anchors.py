"""Anchor layouts (pipeline/fit/geometry.py): scattered points thinned by farthest-point
sampling, or a lattice whose layers lie parallel to the ground."""
from __future__ import annotations

import pytest
import torch

from conftest import SyntheticVideo, cube_scene
from pipeline.fit.geometry import inside_visual_hull, sample_anchors
from taichi_sim.errors import SgausError


@pytest.fixture(scope="module")
def cube():
    _model, _binding, g, cams = cube_scene(size=64)
    with torch.no_grad():
        rgb, alpha = g.render_with_alpha(cams)
    return g, SyntheticVideo(cams, [(rgb, alpha)])


def _layers(points: torch.Tensor, up: torch.Tensor, tol: float = 1e-5) -> list[int]:
    """Sizes of the groups of points at one height along ``up``, lowest first."""
    h, _ = torch.sort(points.double() @ up.double())
    sizes, start = [], 0
    for i in range(1, len(h) + 1):
        if i == len(h) or h[i] - h[start] > tol:
            sizes.append(i - start)
            start = i
    return sizes


@pytest.mark.parametrize("up", [(0.0, 1.0, 0.0), (0.0, 1.0, 0.25)])
def test_lattice_anchors_lie_in_layers_parallel_to_the_ground(cube, up):
    g, frames = cube
    n = torch.tensor(up) / torch.tensor(up).norm()
    a = sample_anchors(g, frames, 120, seed=0, layout="lattice", up=up)
    assert a.shape == (120, 3)
    assert bool(inside_visual_hull(a, frames.alpha(0), frames.cameras).all())
    layers = _layers(a, n)
    # the lowest layer is flat and holds many anchors, not one: the object lands on all of them at once
    assert layers[0] >= 9, layers
    # and every anchor sits on one of a few layers, one lattice spacing apart
    assert len(layers) <= 10 and sum(layers) == 120
    d = torch.cdist(a.double(), a.double()) + torch.eye(120, dtype=torch.float64)
    nearest = d.min(1).values
    assert float(nearest.max() - nearest.min()) < 1e-4 * float(nearest.median()) + 1e-6


def test_scattered_anchors_do_not_lie_in_layers(cube):
    # the default layout, for contrast: points jittered through the hull and the Gaussian centres
    g, frames = cube
    a = sample_anchors(g, frames, 120, seed=0)
    assert a.shape == (120, 3)
    assert _layers(a, torch.tensor([0.0, 1.0, 0.0]))[0] < 9


def test_lattice_layout_names_bad_requests(cube):
    g, frames = cube
    with pytest.raises(SgausError, match="anchor layout"):
        sample_anchors(g, frames, 50, layout="hexagonal")
    with pytest.raises(SgausError, match="ask for fewer anchors"):
        sample_anchors(g, frames, 2_000_000, layout="lattice")


def test_anchor_layout_is_a_fit_setting_that_keys_the_anchors_stage():
    from pipeline.fit.settings import make_settings

    fps, lattice = make_settings("tiny"), make_settings("tiny", overrides={"anchor_layout": "lattice"})
    assert fps.anchors().layout == "fps" and lattice.anchors().layout == "lattice"
    assert fps.anchors() != lattice.anchors()  # the stage key hashes these settings
    with pytest.raises(SgausError, match="anchor_layout must be one of fps, lattice"):
        make_settings("tiny", overrides={"anchor_layout": "grid"})


# -- anchors from a file of points (fit setting anchor_points) ---------------------------------------

def _cube_volume_points(n_side: int = 12) -> torch.Tensor:
    """Points filling the cube_scene cube (12 cm, centred 16 cm above the ground)."""
    side = torch.linspace(-0.055, 0.055, n_side)
    p = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    return p + torch.tensor([0.0, 0.16, 0.0])


def _write(path, points: torch.Tensor):
    import numpy as np

    if path.suffix == ".npy":
        np.save(path, points.numpy())
    elif path.suffix == ".npz":
        np.savez(path, x=points.numpy(), part=np.zeros(len(points)))  # a dataset's particles/NNN.npz
    else:
        import open3d as o3d

        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.double().numpy()))
        assert o3d.io.write_point_cloud(str(path), cloud)
    return path


def test_anchors_from_a_points_file_are_thinned_from_its_points(cube, tmp_path):
    from pipeline.fit import anchors as anchors_stage
    from pipeline.fit.settings import make_settings

    g, frames = cube
    points = _cube_volume_points()
    got = []
    for name in ("p.npy", "p.npz", "p.ply"):
        path = _write(tmp_path / name, points)
        s = make_settings("tiny", overrides={"anchor_points": str(path), "n_anchors": 64, "k_neighbors": 8})
        a = anchors_stage.run(g, frames, s.anchors())
        assert a.rest_positions.shape == (64, 3) and a.neighbors.shape == (64, 8)
        # every anchor is one of the file's points (no hull, no Gaussian centre), each at most once
        d = torch.cdist(a.rest_positions.double(), points.double())
        assert float(d.min(1).values.max()) < 1e-6
        assert len(set(d.argmin(1).tolist())) == 64
        got.append(a.rest_positions)
    assert torch.allclose(got[0], got[1]) and torch.allclose(got[0], got[2], atol=1e-6)  # one result per format
    # farthest-point thinning covers the volume: an anchor within one point spacing (1 cm) of each corner
    corners = points[((points - points.mean(0)).abs() > 0.054).all(1)]
    assert len(corners) == 8 and float(torch.cdist(corners, got[0]).min(1).values.max()) < 0.0101
    # the hull's sampling, for contrast, puts anchors at the Gaussians and inside the masks' hull
    hull = anchors_stage.run(g, frames, make_settings("tiny", overrides={"n_anchors": 64, "k_neighbors": 8}).anchors())
    assert float(torch.cdist(hull.rest_positions.double(), points.double()).min(1).values.max()) > 1e-3


def test_a_points_file_keys_the_anchors_stage_by_its_content(tmp_path):
    import os

    from pipeline.fit.runner import stage_key
    from pipeline.fit.settings import make_settings

    path = _write(tmp_path / "p.npy", _cube_volume_points())
    key = lambda: stage_key("anchors", "parent", make_settings("tiny", overrides={"anchor_points": str(path)}).anchors())  # noqa: E731
    first = key()
    assert first != stage_key("anchors", "parent", make_settings("tiny").anchors())
    os.utime(path, (1, 1))  # touched, same content: the same anchors, the stage is reused
    assert key() == first
    _write(path, _cube_volume_points() * 1.01)  # the same name with other points: computed again
    assert key() != first


def test_bad_points_files_and_settings_are_named(cube, tmp_path):
    import numpy as np

    from pipeline.fit import anchors as anchors_stage
    from pipeline.fit.settings import make_settings

    g, frames = cube

    def run(path, n=64):
        s = make_settings("tiny", overrides={"anchor_points": str(path), "n_anchors": n, "k_neighbors": 8})
        return anchors_stage.run(g, frames, s.anchors())

    with pytest.raises(SgausError, match="no such points file"):
        run(tmp_path / "missing.npy")
    (tmp_path / "p.txt").write_text("0 0 0\n")
    with pytest.raises(SgausError, match=r"points must be a \.npy, \.npz, \.ply file"):
        run(tmp_path / "p.txt")
    np.save(tmp_path / "flat.npy", np.zeros((100, 2)))
    with pytest.raises(SgausError, match=r"expected N x 3 numbers, got an array of shape \(100, 2\)"):
        run(tmp_path / "flat.npy")
    bad = _cube_volume_points().numpy()
    bad[[3, 7]] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(SgausError, match="2 of its points are not finite"):
        run(tmp_path / "nan.npy")
    np.savez(tmp_path / "two.npz", a=bad, b=bad)
    with pytest.raises(SgausError, match="expected an array named 'x' or a single array, found a, b"):
        run(tmp_path / "two.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SgausError, match="not a readable points file"):
        run(tmp_path / "junk.npz")
    few = _write(tmp_path / "few.npy", _cube_volume_points(3))
    with pytest.raises(SgausError, match="27 points, fewer than the 64 anchors asked for"):
        run(few)
    # points in another frame (here 2 m away) are not bound to Gaussians far away
    away = _write(tmp_path / "away.npy", _cube_volume_points() + torch.tensor([2.0, 0.0, 0.0]))
    with pytest.raises(SgausError, match="the points do not cover the reconstructed object"):
        run(away)
    with pytest.raises(SgausError, match="anchor_points replaces the hull"):
        make_settings("tiny", overrides={"anchor_points": str(few), "anchor_layout": "lattice"})
    with pytest.raises(SgausError, match="anchor_points replaces the hull"):
        make_settings("tiny", overrides={"anchor_points": str(few), "anchor_splat_hull": True})


def test_fit_with_the_truths_particles_as_anchor_points(tiny_data, tiny_run, tmp_path):
    """`sgaus fit --set anchor_points=...`: the saved anchors are the file's points; a changed file
    re-runs the anchors stage on --resume (the static stage is reused); a missing one is one line."""
    import shutil

    import numpy as np

    from conftest import TINY, invoke
    from pipeline.data.anchors import load_anchors

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    truth = tiny_data / "particles" / "000.npz"
    points = torch.from_numpy(np.load(truth)["x"]).double()
    r = invoke("fit", tiny_data, "--out", run, "--resume", *TINY, "--set", f"anchor_points={truth}")
    assert r.exit_code == 0, r.output
    anchors = load_anchors(run / "stages" / "anchors" / "anchors.npz").rest_positions.double()
    assert float(torch.cdist(anchors, points).min(1).values.max()) < 1e-6
    assert (run / "asset").is_dir()

    moved = tmp_path / "moved.npy"
    np.save(moved, np.load(truth)["x"] + np.array([0.01, 0.0, 0.0], dtype=np.float32))
    r = invoke("fit", tiny_data, "--out", run, "--resume", *TINY, "--set", f"anchor_points={moved}")
    assert r.exit_code == 0, r.output
    again = load_anchors(run / "stages" / "anchors" / "anchors.npz").rest_positions.double()
    assert float(torch.cdist(again, points + torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64)).min(1).values.max()) < 1e-6

    r = invoke("fit", tiny_data, "--out", tmp_path / "other", *TINY, "--set", f"anchor_points={tmp_path / 'nope.npy'}")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert [ln for ln in r.output.splitlines() if ln.startswith("Error:")] == [
        f"Error: {tmp_path / 'nope.npy'}: no such points file"], r.output
