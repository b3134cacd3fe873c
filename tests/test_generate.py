"""Shapes filled with particles, and `sgaus generate-mpm` datasets: their files, round trip through
load_dataset, repeatability and bad options (tiny scenes: 32^3 grid, 2 views, 64 px)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import shapes
from pipeline import generate as gen
from pipeline.generate import GenerateConfig, generate, load_scene

# Keenan Crane's "Spot" (CC0), kept in assets/ so the tests need nothing outside the repository
SPOT = str(Path(__file__).resolve().parents[1] / "assets" / "meshes" / "spot.obj")


@pytest.mark.parametrize("name", shapes.shape_names())
def test_every_shape_fills_with_particles(name):
    spacing = 1.0 / 100
    obj = shapes.fill_object(name, size=0.3, spacing=spacing, bottom=(0.1, 0.2, -0.1), seed=3)
    assert obj.n_particles > 300
    assert obj.size == pytest.approx(0.3, abs=2 * spacing)
    assert obj.x[:, 1].min() == pytest.approx(0.2)
    assert 0.05 < obj.surface.mean() < 0.9
    # the surface flag marks the outer shell: surface particles lie nearer the boundary than the rest
    sdf = shapes.SHAPES[name][0]
    depth = -sdf(obj.to_canonical(obj.x)) * obj.scale
    assert np.median(depth[obj.surface]) < np.median(depth[~obj.surface])
    assert np.quantile(depth[obj.surface], 0.9) < 2.5 * spacing
    _assert_normals_point_out_of(obj, sdf)


def _assert_normals_point_out_of(obj, sdf):
    """Surface normals are unit vectors along which the signed distance grows; zero inside."""
    s = obj.surface
    n, x, h = obj.normal[s], obj.x[s], 0.5 * obj.spacing
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)
    assert np.all(obj.normal[~s] == 0.0)
    grows = sdf(obj.to_canonical(x + h * n)) > sdf(obj.to_canonical(x - h * n))
    assert grows.mean() > 0.98, grows.mean()


def test_same_seed_same_particles_other_seed_other_jitter():
    a = shapes.fill_object("cross", size=0.3, spacing=0.01, seed=5)
    b = shapes.fill_object("cross", size=0.3, spacing=0.01, seed=5)
    c = shapes.fill_object("cross", size=0.3, spacing=0.01, seed=6)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.x.shape == c.x.shape and not np.allclose(a.x, c.x)


def test_mesh_fills_through_its_inside():
    obj = shapes.fill_object(mesh=SPOT, size=0.3, spacing=0.01)
    assert obj.n_particles > 2000
    assert obj.size == pytest.approx(0.3, abs=0.02)
    assert 0.05 < obj.surface.mean() < 0.9
    _assert_normals_point_out_of(obj, shapes.load_mesh_sdf(SPOT)[0])


def test_bad_shape_and_mesh_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown shape"):
        shapes.fill_object("blob")
    bad = tmp_path / "bad.obj"
    bad.write_text("this is not a mesh\n")
    with pytest.raises(ValueError, match="no triangles"):
        shapes.fill_object(mesh=bad)
    with pytest.raises(FileNotFoundError):
        shapes.fill_object(mesh=tmp_path / "missing.obj")


def _tiny(**kw) -> GenerateConfig:
    base = dict(shape="torus", size=0.3, grid=32, views=2, frames=10, resolution=64, fit_frames=7)
    base.update(kw)
    return GenerateConfig(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "torus"
    generate(_tiny(), out, progress=False)
    return out


def test_dataset_files_and_scene_json(dataset):
    names = sorted(p.name for p in dataset.iterdir())
    assert names == ["images", "masks", "particles", "scene.json", "transforms.json"]
    scene = load_scene(dataset)
    assert scene["format"] == "sgaus-mpm/1"
    assert scene["generator"] == {"name": "sgaus generate-mpm", "version": 3} and gen.GENERATOR_VERSION == 3
    assert scene["box"] == {"lo": list(_tiny().box_lo), "size": 1.0}  # a drop keeps the box where it was
    assert scene["shading"] == {"enabled": False}
    for key in ("object", "material", "gravity", "velocity", "ground", "frame_dt", "n_frames", "substeps_per_frame",
                "grid", "seed", "contact_frame", "split", "cameras"):
        assert key in scene, key
    assert scene["split"] == {"fit": [0, 7], "future": [7, 10]}
    assert scene["ground"]["normal"] == [0.0, 1.0, 0.0] and scene["ground"]["mode"] == "friction"
    assert 4 <= scene["contact_frame"] <= 9
    assert scene["cameras"] == {"n": 2, "width": 64, "height": 64, "static_views": 0}
    assert scene["material"]["parts"][0]["youngs_modulus"] == 5e4
    for f in range(10):
        npz = np.load(dataset / "particles" / f"{f:03d}.npz")
        assert npz["x"].dtype == np.float32 and npz["x"].shape == (scene["object"]["n_particles"], 3)
        assert npz["surface"].dtype == bool and npz["part"].shape == (scene["object"]["n_particles"],)
    assert len(list((dataset / "images").rglob("*.png"))) == 20
    assert len(list((dataset / "masks").rglob("*.png"))) == 20


def test_dataset_round_trips_through_load_dataset(dataset):
    from pipeline.data.datasets import load_dataset

    ds = load_dataset(dataset)
    assert ds.n_frames == 10 and len(ds.cameras) == 2
    for f in (0, 5, 9):
        x = np.load(dataset / "particles" / f"{f:03d}.npz")["x"]
        uv, depth = ds.cameras.project(x)
        for c in range(len(ds.cameras)):
            img = np.asarray(ds.image(c, f), dtype=np.float64)
            assert img.shape == (64, 64, 4)
            px = np.floor(uv[c].numpy()).astype(int)
            ok = (px >= 0).all(1) & (px < 64).all(1) & (depth[c].numpy() > 0)
            assert ok.mean() > 0.99  # the cameras see the whole object
            rgb = img[px[ok, 1], px[ok, 0], :3]
            alpha = img[px[ok, 1], px[ok, 0], 3]
            assert (rgb.sum(1) > 0.05).mean() > 0.95 and (alpha > 0.5).mean() > 0.95
            # and pixels far from every particle are black
            far = np.ones((64, 64), dtype=bool)
            for dy in range(-5, 6):  # splats reach 3 sigma, about 4 px here
                for dx in range(-5, 6):
                    far[np.clip(px[ok, 1] + dy, 0, 63), np.clip(px[ok, 0] + dx, 0, 63)] = False
            assert img[far][:, :4].max() < 0.02


def test_same_seed_gives_identical_files(dataset, tmp_path):
    again = tmp_path / "again"
    generate(_tiny(shading=False), again, progress=False)  # off is the default
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (dataset / rel).read_bytes() == (again / rel).read_bytes(), rel


@pytest.mark.parametrize("kw, err, msg", [
    (dict(shape="blob"), ValueError, "unknown shape"),
    (dict(mesh="/no/such/mesh.obj"), FileNotFoundError, "mesh file not found"),
    (dict(ground_height=0.5), ValueError, "not below the object"),
    (dict(youngs_modulus=0.0), ValueError, "Young's modulus"),
    (dict(poisson_ratio=0.5), ValueError, "Poisson ratio"),
    (dict(poisson_ratio=-1.2), ValueError, "Poisson ratio"),
    (dict(fit_frames=11), ValueError, "fit-frames"),
    (dict(shape="sphere", size=0.75, drop_height=0.3), ValueError, "does not fit"),
    (dict(shading="yes"), ValueError, "--shading"),
])
def test_bad_options_write_nothing(tmp_path, kw, err, msg):
    out = tmp_path / "data"
    with pytest.raises(err, match=msg):
        generate(_tiny(**kw), out, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_mesh_writes_nothing_and_keeps_an_old_output(tmp_path):
    bad = tmp_path / "bad.obj"
    bad.write_text("garbage\n")
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ValueError, match="no triangles"):
        generate(_tiny(mesh=str(bad)), out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.obj", "data"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_bad_options_exit_with_one_line(tmp_path):
    from cli import cli

    runner = CliRunner()
    for args, msg in ((["--shape", "blob"], "unknown shape"), (["--poisson-ratio", "0.6"], "Poisson ratio"),
                      (["--ground-height", "1"], "not below the object"), (["--youngs-modulus", "-1"], "Young")):
        res = runner.invoke(cli, ["generate-mpm", *args, "--out", str(tmp_path / "d")])
        assert res.exit_code == 1, res.output
        assert "Error:" in res.output and msg in res.output and "Traceback" not in res.output
    assert not (tmp_path / "d").exists()


def test_scene_json_is_plain_json(dataset):
    text = (dataset / "scene.json").read_text()
    assert json.loads(text)["object"]["shape"] == "torus"


# ------------------------------------------------------------------ --shading
def test_surface_normals_point_outwards():
    sphere = shapes.fill_object("sphere", size=0.3, spacing=0.01, bottom=(0.1, 0.2, -0.1), seed=1)
    radial = sphere.x - sphere.center
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    n = sphere.normal
    assert np.allclose(np.linalg.norm(n[sphere.surface], axis=1), 1.0) and np.all(n[~sphere.surface] == 0.0)
    assert np.min(np.sum(n * radial, axis=1)[sphere.surface]) > 0.99
    # a rotated box: each normal is (nearly) one of its rotated face normals, and points outwards
    box = shapes.fill_object("box", size=0.3, spacing=0.01, rotation_deg=(20.0, 35.0, 0.0), seed=1)
    local = box.normal[box.surface] @ box.rotation  # back into the box's own frame
    assert np.median(np.abs(local).max(axis=1)) > 0.999
    assert np.all(np.sum(box.normal[box.surface] * (box.x[box.surface] - box.center), axis=1) > 0)


def test_deformed_normals_stay_perpendicular_to_deformed_tangents():
    rng = np.random.default_rng(4)
    n = rng.normal(size=(50, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    t = np.cross(n, rng.normal(size=(50, 3)))  # tangents of the surface
    F = np.eye(3) + 0.4 * rng.normal(size=(50, 3, 3))
    F[np.linalg.det(F) < 0, :, 0] *= -1.0  # no inversions
    m = gen.deformed_normals(F, n)
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0)
    np.testing.assert_allclose(np.einsum("pi,pij,pj->p", m, F, t), 0.0, atol=1e-9)
    assert np.all(np.sum(m * n, axis=1) > -0.999)  # not flipped into the object
    R = shapes.rotation_matrix((10.0, 50.0, -30.0))
    np.testing.assert_allclose(gen.deformed_normals(np.broadcast_to(R, (50, 3, 3)), n), n @ R.T, atol=1e-12)


def test_normals_follow_a_spinning_object():
    from taichi_sim.mpm import MPMSimulator

    cfg = _tiny(shape="box", size=0.2, grid=32, gravity=(0.0, 0.0, 0.0), shading=True)
    cfg.validate()
    obj, E = gen.build_object(cfg)
    sim = MPMSimulator(obj.x, 2e5, 0.3, 1000.0, grid=32, box_lo=cfg.box_lo, box_size=1.0, gravity=(0, 0, 0))
    omega = 3.0  # rad/s about z
    r = obj.x - obj.x.mean(0)
    sim.set_velocity(np.stack([-omega * r[:, 1], omega * r[:, 0], np.zeros(len(r))], axis=1))
    for _ in range(5):
        sim.advance(0.03)
    h = 0.03 / sim.substeps_per_frame
    s = obj.surface
    F = (np.eye(3) + h * sim.C.numpy()[s]) @ sim.F.numpy()[s]
    got = gen.deformed_normals(F, obj.normal[s])
    R = shapes.rotation_matrix((0.0, 0.0, np.degrees(omega * 0.15)))  # 26 degrees
    assert np.min(np.sum(got * (obj.normal[s] @ R.T), axis=1)) > 0.99
    assert np.min(np.sum(obj.normal[s] * (obj.normal[s] @ R.T), axis=1)) < 0.91  # unrotated normals would not do


def test_shade_is_lambert_with_ambient():
    colors = np.array([[1.0, 0.5, 0.2]] * 3)
    light = np.asarray(gen.LIGHT_DIRECTION)
    side = np.cross(light, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    out = gen.shade(colors, np.stack([light, -light, side]))
    a = gen.SHADING_AMBIENT
    np.testing.assert_allclose(out, colors * np.array([[1.0], [a], [a]]))
    assert light[1] > 0.8 and light[0] > 0.3  # from above and to the side


@pytest.fixture(scope="module")
def shaded(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "shaded"
    generate(_tiny(shading=True), out, progress=False)
    return out


def test_shading_lights_the_side_facing_the_light(dataset, shaded):
    from pipeline.data.datasets import load_dataset

    scene = load_scene(shaded)
    assert scene["shading"] == {"enabled": True, "model": "lambert", "ambient": gen.SHADING_AMBIENT,
                                "light_direction": list(gen.LIGHT_DIRECTION)}
    ds_flat, ds_lit = load_dataset(dataset), load_dataset(shaded)
    obj, _ = gen.build_object(_tiny())
    s = obj.surface
    x, n = obj.x[s], obj.normal[s]  # frame 0: the rest state
    n_light = n @ np.asarray(gen.LIGHT_DIRECTION)
    uv, _ = ds_lit.cameras.project(x)
    for c in range(len(ds_lit.cameras)):
        flat = np.asarray(ds_flat.image(c, 0), dtype=np.float64)
        lit = np.asarray(ds_lit.image(c, 0), dtype=np.float64)
        assert np.array_equal(flat[..., 3], lit[..., 3])  # the same geometry, only the colours differ
        obj_px = flat[..., 3] > 0.9
        ratio = lit[..., :3].sum(-1)[obj_px] / np.maximum(flat[..., :3].sum(-1)[obj_px], 1e-6)
        assert ratio.max() > 0.85 and ratio.min() < 0.6  # not one brightness per colour any more
        centre = ds_lit.cameras.centers()[c].double().numpy()
        facing = np.sum(n * (centre - x), axis=1) > 0  # seen from this camera
        px = np.floor(uv[c].numpy()).astype(int)
        ok = facing & (px >= 0).all(1) & (px < 64).all(1)
        bright = lit[px[:, 1].clip(0, 63), px[:, 0].clip(0, 63), :3].sum(-1)
        base = flat[px[:, 1].clip(0, 63), px[:, 0].clip(0, 63), :3].sum(-1)
        rel = bright / np.maximum(base, 1e-6)
        towards, away = ok & (n_light > 0.6), ok & (n_light < 0.0)
        assert towards.sum() > 10 and away.sum() > 10
        # lit about 0.8, the far side about 0.45 of the flat colour
        assert rel[towards].mean() > rel[away].mean() + 0.15, (rel[towards].mean(), rel[away].mean())
        # after the bounce (normals carried by F) the shading still spans lit and unlit
        flat9 = np.asarray(ds_flat.image(c, 9), dtype=np.float64)
        lit9 = np.asarray(ds_lit.image(c, 9), dtype=np.float64)
        px9 = flat9[..., 3] > 0.9
        ratio9 = lit9[..., :3].sum(-1)[px9] / np.maximum(flat9[..., :3].sum(-1)[px9], 1e-6)
        assert ratio9.max() > 0.85 and ratio9.min() < 0.6 and np.isfinite(ratio9).all()


def test_flat_images_are_the_plain_render_of_the_particle_colours(dataset):
    """Without --shading the images are what generate-mpm rendered before the option existed."""
    import imageio.v3 as iio

    from pipeline.data.datasets import load_dataset

    cfg = _tiny()
    cfg.validate()
    obj, _ = gen.build_object(cfg)
    ds = load_dataset(dataset)
    s = obj.surface
    for f in (0, 9):
        x = np.load(dataset / "particles" / f"{f:03d}.npz")["x"]
        rgb, alpha = gen.render_frame(x[s], gen.particle_colors(obj)[s], 0.7 * obj.spacing, ds.cameras)
        for c, name in enumerate(ds.cameras.names):
            straight = torch.where(alpha[c] > 0, rgb[c] / alpha[c].clamp_min(1e-6), torch.zeros_like(rgb[c]))
            want = gen._to_u8(torch.cat([straight.clamp(0, 1), alpha[c]], dim=-1))
            assert np.array_equal(iio.imread(dataset / "images" / name / f"{f:03d}.png"), want), (f, name)


def test_cli_shading_option_reaches_scene_json(tmp_path):
    from cli import cli

    runner = CliRunner()
    for flag, enabled in (("--shading", True), ("--no-shading", False)):
        out = tmp_path / flag
        res = runner.invoke(cli, ["generate-mpm", "--shape", "sphere", "--size", "0.2", "--grid", "16", "--frames", "2",
                                  "--views", "1", "--resolution", "16", "--quiet", flag, "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert load_scene(out)["shading"]["enabled"] is enabled


def test_wall_contact_finds_the_first_frame_near_a_wall():
    from taichi_sim.mpm import WALL_CELLS, wall_contact

    n, lo = 20, (-0.5, -0.1, -0.5)
    dx = 1.0 / n
    pos = np.zeros((4, 2, 3))  # two particles in the middle of the box, then one moves to +x
    pos[:, :, 1] = 0.3
    pos[2, 1, 0] = 0.5 - (WALL_CELLS + 1.5 + 1.0) * dx + 1e-9  # high face: the stencil (+1 cell) reaches the wall
    pos[3, 1, 0] = 0.5 - 1.5 * dx
    assert wall_contact(pos, lo, 1.0, n) == (2, 0, 1)
    assert wall_contact(pos[:2], lo, 1.0, n) is None
    pos[2, 1, 0] = 0.5 - (WALL_CELLS + 1.5 + 1.0) * dx - 1e-6  # just clear of it
    assert wall_contact(pos[:3], lo, 1.0, n) is None
    low = np.zeros((1, 1, 3))
    low[0, 0] = (0.0, -0.1, -0.5 + (WALL_CELLS + 0.5) * dx)  # z low face within reach; y at the box floor is skipped
    assert wall_contact(low, lo, 1.0, n) == (0, 2, -1)
    low[0, 0, 2] = 0.0
    assert wall_contact(low, lo, 1.0, n) is None


def test_the_box_follows_a_throw_and_keeps_the_object_clear():
    from taichi_sim.mpm import wall_contact

    drop = _tiny()
    drop.validate()
    obj, _ = gen.build_object(drop)
    assert drop.simulation_box_lo(obj.x) == drop.box_lo
    for velocity in ((0.8, 0.0, -0.5), (50.0, 0.0, 50.0), (-50.0, 0.0, 0.0)):
        cfg = _tiny(velocity=velocity)
        cfg.validate()
        lo = cfg.simulation_box_lo(obj.x)
        assert lo[1] == drop.box_lo[1]
        for a in (0, 2):
            shift = lo[a] - drop.box_lo[a]
            assert np.sign(shift) == np.sign(velocity[a])  # moved toward the throw (not at all without one)
        assert wall_contact(obj.x[None], lo, 1.0, cfg.grid, margin=gen.WALL_MARGIN - 1e-6) is None  # clear at rest
    cfg = _tiny(velocity=(0.8, 0.0, -0.5))
    lo = cfg.simulation_box_lo(obj.x)
    assert np.allclose(np.array(lo)[[0, 2]] / cfg.dx, np.round(np.array(lo)[[0, 2]] / cfg.dx))  # whole cells


def test_a_throw_into_a_wall_is_refused_and_nothing_is_written(tmp_path):
    from taichi_sim.errors import SgausError

    out = tmp_path / "hit"
    with pytest.raises(SgausError, match=r"reached a wall of the 1 m simulation box at frame \d+ \(x = "):
        generate(_tiny(velocity=(6.0, 0.0, 0.0), frames=12), out, progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(SgausError, match=r"lies within reach of a wall of the 1 m simulation box at --grid 16: make it "):
        generate(_tiny(size=0.5, grid=16, frames=3, fit_frames=2), out, progress=False)  # too wide for the coarse grid's walls
    assert not out.exists()


def test_a_throw_the_old_box_would_have_stopped_is_simulated_in_a_box_that_follows_it():
    from taichi_sim.mpm import wall_contact

    cfg = _tiny(velocity=(1.0, 0.0, 0.0), frames=12)
    res = gen.simulate_object(cfg, progress=False)
    assert res.box_lo[0] > cfg.box_lo[0] and res.box_lo[2] == cfg.box_lo[2]
    # in the centred box of version 2 this motion would have reached the +x wall
    assert wall_contact(res.positions, cfg.box_lo, 1.0, cfg.grid)[1:] == (0, 1)
    assert wall_contact(res.positions, res.box_lo, 1.0, cfg.grid) is None
    com_x = res.positions[..., 0].mean(1)
    assert np.all(np.diff(com_x) > 0)  # carried on along the throw, never sent back
