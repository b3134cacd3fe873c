"""`sgaus simulate` / `export`: physics of the edits and the files written, on a small asset
built directly (a cube of anchors with Gaussians bound to it)."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import cli
from conftest import make_asset as asset_of
from pipeline.asset import Asset, load_asset, save_asset
from pipeline.data.gaussians import Gaussians, load_ply
from pipeline.simulate import Edits, apply_edits, parse_friction, parse_gravity, simulate_asset
from taichi_sim.binding import compute_binding
from taichi_sim.spring_model import nearest_springs
from taichi_sim.spring_params import SpringParams

DROP = 0.3  # height of the cube's bottom above the ground


def make_asset(velocity=(0.0, 0.0, 0.0), frames=20, drop=DROP) -> Asset:
    side = torch.linspace(-0.05, 0.05, 4)
    anchors = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    anchors[:, 1] += drop + 0.05
    gen = torch.Generator().manual_seed(0)
    pts = anchors + 0.01 * torch.randn(anchors.shape, generator=gen)
    g = Gaussians(means=pts, log_scales=torch.full((len(pts),), math.log(0.01)),
                  colors=torch.rand(len(pts), 3, generator=gen), opacity_logits=torch.full((len(pts),), 2.0))
    return asset_of(anchors, g, 12, 4, 40, velocity, frames)


def centre(positions):
    return positions.double().mean(1)


def first_contact(positions) -> int:
    low = positions[..., 1].min(1).values
    return int(torch.nonzero(low <= 1e-6)[0]) if (low <= 1e-6).any() else len(low)


def test_zero_gravity_and_zero_velocity_does_not_move():
    a = apply_edits(make_asset(), Edits(gravity=0.0))
    pos, means, _ = simulate_asset(a, 15)
    assert torch.allclose(pos, pos[:1].expand_as(pos), atol=1e-6)
    assert torch.allclose(means, means[:1].expand_as(means), atol=1e-6)


def test_zero_gravity_sideways_velocity_moves_in_a_straight_line():
    a = apply_edits(make_asset(), Edits(gravity=0.0, velocity=(0.5, 0.0, 0.0)))
    pos, _, _ = simulate_asset(a, 15)
    c = centre(pos)
    t = torch.arange(16, dtype=torch.float64) * 0.03
    assert torch.allclose(c[:, 0] - c[0, 0], 0.5 * t, atol=1e-5)
    assert torch.allclose(c[:, 1:], c[:1, 1:].expand(16, 2), atol=1e-6)


def test_hypergravity_reaches_the_ground_sooner():
    normal = first_contact(simulate_asset(make_asset(), 20)[0])
    hyper = first_contact(simulate_asset(apply_edits(make_asset(), Edits(gravity=19.6)), 20)[0])
    assert hyper < normal <= 20


def test_higher_ground_means_earlier_contact():
    pos_low, _, _ = simulate_asset(make_asset(), 20)
    high = apply_edits(make_asset(), Edits(ground_height=0.15))
    pos_high, _, _ = simulate_asset(high, 20)
    low_first = int(torch.nonzero(pos_low[..., 1].min(1).values <= 1e-6)[0])
    high_first = int(torch.nonzero(pos_high[..., 1].min(1).values <= 0.15 + 1e-6)[0])
    assert high_first < low_first


def test_sticky_ground_stops_tangential_motion_after_contact():
    # a flat sheet of anchors dropped 5 cm while moving sideways at 0.6 m/s: it lands flat
    side = torch.linspace(-0.05, 0.05, 5)
    sheet = torch.stack(torch.meshgrid(side, torch.zeros(1), side, indexing="ij"), -1).reshape(-1, 3)
    sheet[:, 1] = 0.05
    base = make_asset(velocity=(0.6, 0.0, 0.0))
    neighbors, rest = nearest_springs(sheet, 8)
    model = dataclasses.replace(base.model, rest_positions=sheet, neighbors=neighbors, rest_length=rest)
    bind = compute_binding(sheet, sheet, 1, 0.5)
    g = Gaussians(means=sheet.clone(), log_scales=torch.full((25,), -4.0), colors=torch.rand(25, 3),
                  opacity_logits=torch.zeros(25))
    asset = dataclasses.replace(base, gaussians=g, model=model, binding=bind,
                                params=SpringParams.uniform(25, 3.0, 0.0, -1.0))

    def run(friction):
        pos, _, _ = simulate_asset(apply_edits(asset, Edits(friction=friction)), 12)
        landed = int(torch.nonzero((pos[..., 1] <= 1e-6).all(1))[0])  # first frame flat on the ground
        return pos, landed

    sticky, f_s = run("sticky")
    smooth, f_m = run("smooth")
    assert f_s == f_m and f_s < 8
    # after contact the sticky sheet does not move along the ground at all ...
    assert float((sticky[f_s:, :, [0, 2]] - sticky[f_s, :, [0, 2]]).abs().max()) < 1e-6
    # ... while on a smooth ground it keeps sliding at 0.6 m/s
    speed = (smooth[-1, :, 0] - smooth[f_m, :, 0]).mean() / (0.03 * (12 - f_m))
    assert float(speed) == pytest.approx(0.6, rel=1e-3)


def test_stiffness_scale_and_parsers():
    a = apply_edits(make_asset(), Edits(stiffness_scale=10.0))
    assert torch.allclose(a.params.log_stiffness, torch.full_like(a.params.log_stiffness, 4.0))
    assert parse_gravity("0") == 0.0 and parse_gravity("0,-3,0") == (0.0, -3.0, 0.0)
    assert parse_friction("sticky") == "sticky" and parse_friction("0.5") == 0.5
    with pytest.raises(ValueError, match="gravity"):
        parse_gravity("abc")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parse_friction("2")
    with pytest.raises(ValueError, match="above the object"):
        apply_edits(make_asset(), Edits(ground_height=1.0))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    save_asset(run / "asset", make_asset(frames=8))
    return run


def test_cli_writes_every_output(run_dir, tmp_path):

    out = tmp_path / "sim"
    r = CliRunner().invoke(cli, ["--arch", "cpu", "simulate", str(run_dir), "--gravity", "19.6", "--orbit",
                                 "--size", "64", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    import imageio.v2 as imageio

    reader = imageio.get_reader(out / "video.mp4")
    n = sum(1 for _ in reader)
    reader.close()
    assert n == 8
    assert len(list((out / "frames").glob("*.png"))) == 8
    plys = sorted((out / "ply").glob("*.ply"))
    assert len(plys) == 8 and len(load_ply(plys[-1])) == len(make_asset().gaussians)
    traj = np.load(out / "anchors.npz")["positions"]
    assert traj.shape == (8, 64, 3)
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["gravity"] == pytest.approx([0.0, -19.6, 0.0])
    # the rendered PNG shows the object (not a blank frame)
    assert imageio.imread(out / "frames" / "000.png").max() > 50


def test_export_ply_and_sequence(run_dir, tmp_path):
    r = CliRunner().invoke(cli, ["--arch", "cpu", "export", str(run_dir), "--out", str(tmp_path / "a.ply")])
    assert r.exit_code == 0, r.output
    g = load_ply(tmp_path / "a.ply")
    assert torch.equal(g.means, load_asset(run_dir).gaussians.means)
    r = CliRunner().invoke(cli, ["--arch", "cpu", "export", str(run_dir), "--format", "splat-sequence",
                                 "--frames", "3", "--out", str(tmp_path / "seq")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "seq").glob("*.ply"))) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gravity", "abc"], "gravity"),
        (["--ground-height", "5"], "above the object"),
        (["--friction", "slippery"], "friction"),
        (["--stiffness-scale", "-1"], "stiffness-scale"),
    ],
)
def test_bad_edits_give_one_line_and_write_nothing(run_dir, tmp_path, args, message):
    out = tmp_path / "never"
    r = CliRunner().invoke(cli, ["--arch", "cpu", "simulate", str(run_dir), "--orbit", "--out", str(out), *args])
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output
    assert not out.exists()


def test_missing_run_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(cli, ["--arch", "cpu", "simulate", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "no such run directory" in r.output
    assert not (tmp_path / "o").exists()
