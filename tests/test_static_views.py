"""Static photos beside a generated video (`generate-mpm --static-views`): what is written, how
frame0_views joins them to the videos' frame 0, and that the fit's shape stages use them, so that
the anchors of a torus leave its hole empty (the videos' low cameras cannot see into it)."""
from __future__ import annotations

import math
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from pipeline.data.cameras import Cameras
from pipeline.data.datasets import frame0_views, load_dataset, write_transforms
from pipeline.fit.geometry import inside_visual_hull
from taichi_sim.errors import SgausError
from tests.conftest import invoke

N_STATIC = 6
TINY_TORUS = ["--shape", "torus", "--size", 0.3, "--grid", 32, "--views", 2, "--frames", 6, "--fit-frames", 4,
              "--resolution", 64]


@pytest.fixture(scope="module")
def torus(tmp_path_factory):
    """The same tiny torus, without static photos and with N_STATIC of them."""
    root = tmp_path_factory.mktemp("static_views")
    for name, extra in (("plain", []), ("photos", ["--static-views", N_STATIC])):
        r = invoke("generate-mpm", *TINY_TORUS, *extra, "--out", root / name, "--quiet")
        assert r.exit_code == 0, r.output
    return root / "plain", root / "photos"


def _hole_axis(data) -> tuple[np.ndarray, float]:
    """The torus's axis point at frame 0 (its centre) and its hole's radius, from the true particles."""
    x = np.load(data / "particles" / "000.npz")["x"].astype(np.float64)
    centre = x.mean(0)
    radial = np.linalg.norm((x - centre)[:, [0, 2]], axis=1)
    return centre, float(radial.min())


def test_the_photos_see_frame_0_from_the_upper_hemisphere_and_the_video_is_unchanged(torus):
    plain, photos = torus
    for cam in ("cam_00", "cam_01"):  # the videos are the same files
        for f in range(6):
            assert (plain / "images" / cam / f"{f:03d}.png").read_bytes() == \
                (photos / "images" / cam / f"{f:03d}.png").read_bytes()
    assert not (plain / "static").exists()
    scene = load_dataset(photos).scene.raw
    assert scene["cameras"] == {"n": 2, "width": 64, "height": 64, "static_views": N_STATIC,
                                "static_elevation_deg": [10.0, 70.0]}
    st = load_dataset(photos / "static")
    assert st.n_frames == 1 and st.cameras.names == [f"static_{i:03d}" for i in range(N_STATIC)]
    assert (st.cameras.width, st.cameras.height) == (64, 64)
    x = np.load(photos / "particles" / "000.npz")["x"]
    centre = x.mean(0)
    elevations = []
    for c in range(N_STATIC):
        d = st.cameras.centers()[c].numpy() - centre
        elevations.append(math.degrees(math.asin(d[1] / np.linalg.norm(d))))
        uv, depth = st.cameras[c].project(x)
        inside = (uv[0] >= 0).all(1) & (uv[0] < 64).all(1) & (depth[0] > 0)
        assert bool(inside.all())  # each photo sees the whole object
        alpha = st.image(c, 0)[..., 3].numpy()
        px = np.floor(uv[0].numpy()).astype(int)
        assert (alpha[px[:, 1], px[:, 0]] > 0.5).mean() > 0.9  # and shows it where it is
        assert 0.05 < (alpha > 0.5).mean() < 0.9
    assert min(elevations) > 5 and max(elevations) < 75 and max(elevations) - min(elevations) > 40


def test_frame0_views_joins_the_photos_to_the_videos_frame_0(torus):
    plain, photos = torus
    ds = load_dataset(plain)
    assert frame0_views(ds) is ds  # nothing to add
    ds = load_dataset(photos)
    v = frame0_views(ds)
    st = load_dataset(photos / "static")
    assert v.n_frames == 1 and len(v.cameras) == 2 + N_STATIC
    assert v.cameras.names == ["cam_00", "cam_01", *st.cameras.names]
    assert torch.equal(v.cameras.viewmats, torch.cat([ds.cameras.viewmats, st.cameras.viewmats]))
    assert torch.equal(v.image(1, 0), ds.image(1, 0)) and torch.equal(v.image(4, 0), st.image(2, 0))
    with pytest.raises(SgausError, match="out of range"):
        v.image(0, 1)


def test_the_photos_carve_the_torus_hole_the_videos_fill(torus):
    plain, photos = torus
    centre, hole = _hole_axis(photos)
    # points on the axis and on a circle around it at 40 % of the hole's radius, at three heights
    turns = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    ring = [[0.0, 0.0]] + [[0.4 * hole * np.cos(t), 0.4 * hole * np.sin(t)] for t in turns]
    pts = torch.tensor(np.array([centre + [dx, dy, dz] for dx, dz in ring for dy in (-0.01, 0.0, 0.01)]),
                       dtype=torch.float32)
    ds = load_dataset(photos)
    videos = ds.frame(0)[..., 3:4]
    assert bool(inside_visual_hull(pts, videos, ds.cameras).all())  # two low cameras: the hole looks full
    v = frame0_views(ds)
    assert not bool(inside_visual_hull(pts, v.frame(0)[..., 3:4], v.cameras).any())


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bad_static_photos_are_named(torus, tmp_path):
    _, photos = torus
    st = load_dataset(photos / "static")
    two = _copy(photos, tmp_path / "two")
    write_transforms(two / "static", st.cameras, 2, 0.03, image_pattern="images/{camera}.png",
                     mask_pattern="masks/{camera}.png")
    with pytest.raises(SgausError, match="views of frame 0, but it lists 2 frames"):
        frame0_views(load_dataset(two))
    clash = _copy(photos, tmp_path / "clash")
    renamed = Cameras(st.cameras.viewmats, st.cameras.Ks, 64, 64, ["cam_01", *st.cameras.names[1:]])
    write_transforms(clash / "static", renamed, 1, 0.03, image_pattern="images/{camera}.png", mask_pattern=None)
    shutil.copy(clash / "static" / "images" / "static_000.png", clash / "static" / "images" / "cam_01.png")
    with pytest.raises(SgausError, match="static photo 'cam_01' has the name of a video camera"):
        frame0_views(load_dataset(clash))
    small = _copy(photos, tmp_path / "small")
    for p in (small / "static" / "images").glob("*.png"):
        iio.imwrite(p, iio.imread(p)[::2, ::2])
    write_transforms(small / "static", st.cameras.scaled(0.5), 1, 0.03, image_pattern="images/{camera}.png",
                     mask_pattern=None)
    with pytest.raises(SgausError, match="static photos are 32x32, the videos 64x64"):
        frame0_views(load_dataset(small))


def test_bad_static_views_option_is_one_line(tmp_path):
    r = invoke("generate-mpm", *TINY_TORUS, "--static-views", -2, "--out", tmp_path / "bad", "--quiet")
    assert r.exit_code != 0 and "--static-views must be 0 or more, got -2" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "bad").exists()


def test_photos_from_below_carve_the_underside_the_upper_hemisphere_leaves(torus, tmp_path):
    """Cameras above an object never see its underside, so its visual hull hangs below it (the
    fit's contact offset stands in for that depth); --static-elevation with a negative low bound
    photographs it from below too."""
    _, photos = torus
    below = tmp_path / "below"
    r = invoke("generate-mpm", *TINY_TORUS, "--static-views", N_STATIC, "--static-elevation=-20,60", "--out", below,
               "--quiet")
    assert r.exit_code == 0, r.output
    assert load_dataset(below).scene.raw["cameras"]["static_elevation_deg"] == [-20.0, 60.0]
    x = np.load(below / "particles" / "000.npz")["x"].astype(np.float64)
    centre = x.mean(0)
    st = load_dataset(below / "static")
    d = st.cameras.centers().numpy() - centre
    elevations = np.degrees(np.arcsin(d[:, 1] / np.linalg.norm(d, axis=1)))
    assert elevations.min() < -5 and elevations.max() < 60 and (elevations < 0).sum() >= 2
    # how far each hull reaches below the torus's ring: the upper hemisphere's photos leave a
    # skirt of 3 cm here; two photos from below carve about a third of it (the ring's own
    # silhouette seen from below still covers the rest, and a pixel is 7 mm)
    bottom = x[:, 1].min()
    _, hole = _hole_axis(below)
    radius = 0.5 * (hole + np.linalg.norm((x - centre)[:, [0, 2]], axis=1).max())  # the tube's centre line
    turns = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    depths = np.linspace(0.0, 0.06, 61)
    pts = torch.tensor(np.array([[centre[0] + radius * np.cos(t), bottom - dy, centre[2] + radius * np.sin(t)]
                                 for t in turns for dy in depths]), dtype=torch.float32)

    def skirt(data) -> float:
        v = frame0_views(load_dataset(data))
        inside = inside_visual_hull(pts, v.frame(0)[..., 3:4], v.cameras).reshape(len(turns), len(depths)).numpy()
        return float(np.mean([depths[row].max() if row.any() else 0.0 for row in inside]))

    assert skirt(photos) > skirt(below) + 0.005


def test_bad_static_elevation_is_one_line_and_writes_nothing(tmp_path):
    for value, message in (("30,20", "--static-elevation must satisfy -90 < LOW <= HIGH < 90 degrees, got 30,20"),
                           ("-90,10", "--static-elevation must satisfy"),
                           ("10", "--static-elevation: '10' has 1 number(s); expected 2 numbers"),
                           ("-80,10", "--static-elevation -80 puts a static camera")):
        out = tmp_path / value.replace(",", "_")
        r = invoke("generate-mpm", *TINY_TORUS, "--static-views", 2, f"--static-elevation={value}", "--out", out,
                   "--quiet")
        assert r.exit_code != 0 and message in r.output, (value, r.output)
        assert "Traceback" not in r.output and not out.exists()
    r = invoke("generate-mpm", *TINY_TORUS, "--static-elevation=-10,60", "--out", tmp_path / "none", "--quiet")
    assert r.exit_code != 0 and "--static-elevation has no effect without --static-views" in r.output
    assert not (tmp_path / "none").exists()


def test_the_fit_takes_the_shape_from_the_photos(torus, tmp_path):
    """Static Gaussians and anchors of the tiny preset (more anchors): with the photos, no Gaussian
    inside the hole at the tube's height and fewer anchors there; from the videos alone, many."""
    from pipeline.fit.runner import Fitter
    from pipeline.fit.settings import make_settings

    settings = make_settings("tiny", overrides={"n_anchors": 256})
    gaussians, anchors = {}, {}
    for name, data in zip(("plain", "photos"), torus):
        f = Fitter(data, tmp_path / name, settings, progress=False, log=lambda *a: None)
        try:
            assert len(f.shape_ds.cameras) == (2 if name == "plain" else 2 + N_STATIC)
            g, key = f.static()
            a, _ = f.anchors(g, key)
        finally:
            f.close()
        centre, hole = _hole_axis(data)
        y = np.load(data / "particles" / "000.npz")["x"][:, 1]
        half = (y.max() - y.min()) / 2

        def in_hole(points):
            x = points.detach().double().numpy() - centre
            return int(((np.linalg.norm(x[:, [0, 2]], axis=1) < 0.6 * hole) & (np.abs(x[:, 1]) < half)).sum())

        gaussians[name] = in_hole(g.means[g.opacities().reshape(-1) > 0.05])
        anchors[name] = in_hole(a.rest_positions)
    assert gaussians["photos"] == 0 and gaussians["plain"] >= 10, gaussians
    assert 2 * anchors["photos"] < anchors["plain"], anchors


def test_reconstruct_fits_the_photos_too(torus, tmp_path):
    from pipeline.fit.static import StaticSettings, reconstruct_to_dir

    summary = reconstruct_to_dir(torus[1], tmp_path / "recon", StaticSettings(iterations=20, n_init=300),
                                 progress=False, log=lambda *a: None)
    assert list(summary["psnr"]) == ["cam_00", "cam_01", *[f"static_{i:03d}" for i in range(N_STATIC)]]
