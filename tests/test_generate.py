"""Shapes filled with particles, and `sgaus generate-mpm` datasets: their files, round trip through
load_dataset, repeatability and bad options (tiny scenes: 32^3 grid, 2 views, 64 px)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import shapes
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
    for key in ("object", "material", "gravity", "velocity", "ground", "frame_dt", "n_frames", "substeps_per_frame",
                "grid", "seed", "contact_frame", "split", "cameras"):
        assert key in scene, key
    assert scene["split"] == {"fit": [0, 7], "future": [7, 10]}
    assert scene["ground"]["normal"] == [0.0, 1.0, 0.0] and scene["ground"]["mode"] == "friction"
    assert 4 <= scene["contact_frame"] <= 9
    assert scene["cameras"] == {"n": 2, "width": 64, "height": 64}
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
    generate(_tiny(), again, progress=False)
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
