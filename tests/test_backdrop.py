"""render.backdrop: the ground checker in perspective, its fading, occlusion between the ground
and the splats (premultiplied colour), the sky, the three backgrounds and the contact shadow."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.data.cameras import intrinsics_from_fov, look_at
from render import rasterization
from render.backdrop import (CHECKER_COLORS, CHECKER_PIXELS, GROUND_COLORS, composite_backdrop, nice_square,
                             plane_frame)

F64 = torch.float64
W, H = 64, 48


def camera(eye, target, fov=60.0, width=W, height=H):
    vm = look_at(eye, target).to(F64)[None]
    K = intrinsics_from_fov(fov, width, height).to(F64)[None]
    return vm, K


def empty(C=1, width=W, height=H):
    """Nothing rendered: no colour, no coverage."""
    return (torch.zeros(C, height, width, 3, dtype=F64), torch.zeros(C, height, width, 1, dtype=F64),
            torch.zeros(C, height, width, 1, dtype=F64))


def hit_points(vm, K, width=W, height=H, plane_y=0.0):
    """World points where each pixel centre's ray meets the plane y = plane_y (computed from the
    camera-to-world matrix, independently of the module)."""
    c2w = torch.linalg.inv(vm[0])
    u = torch.arange(width, dtype=F64) + 0.5
    v = torch.arange(height, dtype=F64) + 0.5
    pix = torch.stack(torch.broadcast_tensors(u[None, :], v[:, None], torch.ones(1, 1, dtype=F64)), -1)
    d = (pix @ torch.linalg.inv(K[0]).T) @ c2w[:3, :3].T
    o = c2w[:3, 3]
    s = (plane_y - o[1]) / d[..., 1]
    return o + s[..., None] * d, s


def blob(centre, n=300, spread=0.025, colour=(0.9, 0.1, 0.1), seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor(centre, dtype=F64) + spread * torch.randn(n, 3, generator=g, dtype=F64)
    return (means, torch.full((n,), 0.012, dtype=F64), torch.full((n,), 0.9, dtype=F64),
            torch.tensor(colour, dtype=F64).expand(n, 3).clone())


def project(vm, K, point):
    p = vm[0, :3, :3] @ torch.tensor(point, dtype=F64) + vm[0, :3, 3]
    uv = K[0] @ (p / p[2])
    return int(uv[1]), int(uv[0])  # row, column


# ------------------------------------------------------------------ the ground pattern
def test_ground_checker_is_laid_in_the_plane_in_perspective():
    # an oblique camera: squares shrink with distance; every pixel whose footprint lies well inside
    # one square shows exactly that square's colour, and adjacent squares alternate
    vm, K = camera((0.2, 0.5, 0.7), (0.0, 0.0, 0.0), width=128, height=96)
    out = composite_backdrop(*empty(width=128, height=96), vm, K, ground_point=(0.0, 0.0, 0.0), square=0.1,
                             fade_distance=1e9)[0]
    X, s = hit_points(vm, K, width=128, height=96)
    x, z = X[..., 0] / 0.1, X[..., 2] / 0.1
    # distance to the nearest square edge, and how far a pixel's footprint reaches on the plane
    edge = torch.minimum((x - x.round()).abs(), (z - z.round()).abs())
    reach = (X[1:, 1:] - X[:-1, :-1]).norm(dim=-1) / 0.1
    inside = (s[1:, 1:] > 0) & (edge[1:, 1:] > 1.5 * reach)
    parity = ((x.floor() + z.floor()) % 2)[1:, 1:]
    img = out[1:, 1:]
    light, dark = torch.tensor(GROUND_COLORS[0], dtype=F64), torch.tensor(GROUND_COLORS[1], dtype=F64)
    a, b = img[inside & (parity == 0)], img[inside & (parity == 1)]
    assert len(a) > 200 and len(b) > 200
    # one parity class is the light squares, the other the dark ones (which is which is the module's choice)
    if torch.allclose(a[0], dark, atol=1e-3):
        a, b = b, a
    assert torch.allclose(a, light.expand_as(a), atol=1e-3)
    assert torch.allclose(b, dark.expand_as(b), atol=1e-3)


def test_far_ground_fades_into_the_horizon_without_aliasing():
    # a low camera looking at the horizon: near rows alternate strongly, the last rows below the
    # horizon are nearly uniform and of the background's colour (black / white)
    vm, K = camera((0.0, 0.15, 0.0), (0.0, 0.15, -5.0), fov=70, width=128, height=96)
    for background, colour in (("black", 0.0), ("white", 1.0)):
        out = composite_backdrop(*empty(width=128, height=96), vm, K, ground_point=(0.0, 0.0, 0.0),
                                 background=background, square=0.1)[0]
        bottom = out[-4:, :, 0]
        assert bottom.std() > 0.04 and (bottom.max() - bottom.min()) > 0.12  # squares are visible near by
        horizon_row = 48  # the camera looks level: the horizon is the middle row
        assert torch.allclose(out[:horizon_row], torch.full_like(out[:horizon_row], colour))  # sky
        # no moire: far squares are averaged, so neighbouring pixels along a row hardly differ ...
        near_horizon = out[horizon_row:horizon_row + 3, :, 0]  # footprints of 20 squares and more
        assert (near_horizon[:, 1:] - near_horizon[:, :-1]).abs().max() < 0.01
        # ... and the ground fades into the background at the horizon
        assert (out[horizon_row:horizon_row + 2] - colour).abs().max() < 0.06


def test_ground_matches_a_supersampled_rendering_where_point_sampling_aliases():
    # the filtered checker at 96 x 72 against the mean of 4 x 4 sub-pixels (a 384 x 288 rendering):
    # close everywhere up to the horizon, while sampling each pixel centre alone is far off
    eye, target = (0.0, 0.12, 0.0), (0.0, 0.0, -3.0)
    vm, K = camera(eye, target, fov=70, width=96, height=72)
    low = composite_backdrop(*empty(width=96, height=72), vm, K, ground_point=(0.0, 0.0, 0.0), square=0.1,
                             fade_distance=1e9)[0, ..., 0]
    vm4, K4 = camera(eye, target, fov=70, width=384, height=288)
    high = composite_backdrop(*empty(width=384, height=288), vm4, K4, ground_point=(0.0, 0.0, 0.0), square=0.1,
                              fade_distance=1e9)[0, ..., 0]
    reference = high.reshape(72, 4, 96, 4).mean(dim=(1, 3))
    X, s = hit_points(vm, K, width=96, height=72)
    odd = ((X[..., 0] / 0.1).floor() + (X[..., 2] / 0.1).floor()) % 2 == 1
    point_sampled = torch.where(odd, GROUND_COLORS[1][0], GROUND_COLORS[0][0])
    point_sampled = torch.where(s > 0, point_sampled, torch.zeros_like(point_sampled))
    _X4, s4 = hit_points(vm4, K4, width=384, height=288)
    ground = (s4 > 0).reshape(72, 4, 96, 4).all(3).all(1)  # pixels wholly below the horizon
    err = (low - reference)[ground].abs()
    naive = (point_sampled - reference)[ground].abs()
    contrast = GROUND_COLORS[0][0] - GROUND_COLORS[1][0]
    assert err.mean() < 0.01 and err.max() < 0.5 * contrast
    assert naive.mean() > 3 * err.mean() and naive.max() > 0.9 * contrast


def test_camera_looking_up_or_from_below_sees_only_the_background():
    for eye, target in (((0.0, 0.5, 0.0), (0.0, 3.0, -1.0)), ((0.0, -0.5, 1.0), (0.0, -0.5, 0.0))):
        vm, K = camera(eye, target)
        for background in ("black", "white", "checker"):
            sky = composite_backdrop(*empty(), vm, K, ground_point=None, background=background)
            out = composite_backdrop(*empty(), vm, K, ground_point=(0.0, 0.0, 0.0), background=background)
            assert torch.equal(out, sky)


def test_the_three_backgrounds_give_their_colours():
    vm, K = camera((0.0, 0.5, 1.0), (0.0, 0.0, 0.0))
    black = composite_backdrop(*empty(), vm, K, background="black")
    white = composite_backdrop(*empty(), vm, K, background="white")
    checker = composite_backdrop(*empty(), vm, K, background="checker")[0]
    assert torch.equal(black, torch.zeros_like(black)) and torch.equal(white, torch.ones_like(white))
    c0, c1 = (torch.tensor(c, dtype=F64) for c in CHECKER_COLORS)
    assert torch.equal(checker[0, 0], c0) and torch.equal(checker[0, CHECKER_PIXELS], c1)
    assert torch.equal(checker[CHECKER_PIXELS, 0], c1) and torch.equal(checker[CHECKER_PIXELS, CHECKER_PIXELS], c0)
    assert torch.equal(checker[CHECKER_PIXELS - 1, CHECKER_PIXELS - 1], c0)
    flat = checker.reshape(-1, 3)
    assert ((flat == c0).all(1) | (flat == c1).all(1)).all()
    grey = composite_backdrop(*empty(), vm, K, background=(0.2, 0.3, 0.4))
    assert torch.allclose(grey, torch.tensor([0.2, 0.3, 0.4], dtype=F64).expand_as(grey))


# ------------------------------------------------------------------ ground and splats
def test_premultiplied_compositing_and_occlusion_by_the_plane():
    vm, K = camera((0.0, 0.5, 1.0), (0.0, 0.0, 0.0))
    rgb, alpha, depth = empty()
    ground_only = composite_backdrop(rgb, alpha, depth, vm, K, ground_point=(0.0, 0.0, 0.0))
    _X, plane_z = hit_points(vm, K)  # ray parameter with camera z = 1: the plane's camera depth
    rgb[:] = torch.tensor([0.3, 0.1, 0.05], dtype=F64)  # premultiplied: a half-covering red splat
    alpha[:] = 0.5
    below = plane_z > 0
    depth[0, ..., 0] = torch.where(below, 0.5 * plane_z, torch.full_like(plane_z, 1.0))  # in front of the plane
    front = composite_backdrop(rgb, alpha, depth, vm, K, ground_point=(0.0, 0.0, 0.0))
    assert torch.allclose(front, rgb + 0.5 * ground_only)
    depth[0, ..., 0] = torch.where(below, 2.0 * plane_z, torch.full_like(plane_z, 1.0))  # beyond the plane
    behind = composite_backdrop(rgb, alpha, depth, vm, K, ground_point=(0.0, 0.0, 0.0))
    assert torch.allclose(behind[0][below], ground_only[0][below])  # the opaque ground hides the splats
    assert torch.allclose(behind[0][~below], (rgb + 0.5 * ground_only)[0][~below])  # the sky never does


def test_object_shows_over_the_ground_and_the_ground_below_it():
    vm, K = camera((0.0, 0.3, 0.6), (0.0, 0.05, 0.0), width=96, height=72)
    means, scales, opac, cols = blob((0.0, 0.1, 0.0))
    rgb, alpha, depth = rasterization(means, scales, opac, cols, vm, K, 96, 72)
    out = composite_backdrop(rgb, alpha, depth, vm, K, ground_point=(0.0, 0.0, 0.0), square=0.05)[0]
    r, c = project(vm, K, (0.0, 0.1, 0.0))
    assert out[r, c, 0] > 0.7 and out[r, c, 1] < 0.2 and out[r, c, 2] < 0.2  # the red object, in front
    r, c = project(vm, K, (0.0, 0.0, 0.2))  # the ground between the camera and the object
    assert float(alpha[0, r, c, 0]) < 1e-3
    pixel = out[r, c]
    assert float(pixel.max() - pixel.min()) < 1e-6  # grey
    assert 0.3 * GROUND_COLORS[1][0] < float(pixel[0]) <= GROUND_COLORS[0][0] + 1e-6
    # far from the object the ground is shown unchanged by the splats
    ground_only = composite_backdrop(*empty(width=96, height=72), vm, K, ground_point=(0.0, 0.0, 0.0), square=0.05)[0]
    assert torch.allclose(out[alpha[0, ..., 0] == 0], ground_only[alpha[0, ..., 0] == 0])


def test_ground_hides_splats_that_sink_below_it():
    vm, K = camera((0.0, 0.4, 0.5), (0.0, 0.0, 0.0), width=96, height=72)
    means, scales, opac, cols = blob((0.0, -0.08, 0.0), spread=0.015)  # entirely under the plane
    rgb, alpha, depth = rasterization(means, scales, opac, cols, vm, K, 96, 72)
    r, c = project(vm, K, (0.0, -0.08, 0.0))
    assert alpha[0, r, c, 0] > 0.9  # the renderer does draw it ...
    no_ground = composite_backdrop(rgb, alpha, depth, vm, K, ground_point=None)[0]
    assert no_ground[r, c, 0] > 0.7
    out = composite_backdrop(rgb, alpha, depth, vm, K, ground_point=(0.0, 0.0, 0.0), square=0.05)[0]
    ground_only = composite_backdrop(*empty(width=96, height=72), vm, K, ground_point=(0.0, 0.0, 0.0), square=0.05)[0]
    assert torch.allclose(out, ground_only)  # ... and the ground covers it everywhere


# ------------------------------------------------------------------ contact shadow
def test_contact_shadow_darkens_the_ground_under_the_points_and_fades_with_height():
    vm, K = camera((0.0, 1.0, 0.0), (0.0, 0.0, 0.0), fov=60, width=64, height=64)
    flat = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    g = torch.Generator().manual_seed(0)
    # a flat body, 3 x 3 cm and 3 mm thick, resting on the ground
    cluster = torch.tensor([0.2, 0.0, 0.1], dtype=F64) + torch.tensor([0.03, 0.003, 0.03], dtype=F64) * torch.rand(
        200, 3, generator=g, dtype=F64)

    def shade(points):
        return composite_backdrop(*empty(width=64, height=64), vm, K, ground_point=(0.0, 0.0, 0.0), square=0.1,
                                  fade_distance=1e9, shadow_points=points, shadow_strength=1.0,
                                  ground_colors=flat)[0, ..., 0]

    resting = shade(cluster)
    r, c = project(vm, K, (0.215, 0.0, 0.115))
    assert resting[r, c] < 0.1  # dark right under the points
    far_r, far_c = project(vm, K, (-0.3, 0.0, -0.3))
    assert resting[far_r, far_c] == pytest.approx(0.5)  # untouched far away
    assert (resting <= 0.5 + 1e-12).all()
    raised = cluster + torch.tensor([0.0, 0.02, 0.0], dtype=F64)
    assert shade(raised)[r, c] > resting[r, c] + 0.2  # a body above the ground casts a fainter shadow


# ------------------------------------------------------------------ helpers and bad input
def test_nice_square_and_plane_frame():
    assert nice_square(0.4) == pytest.approx(0.1)
    assert nice_square(1.0) == pytest.approx(0.2)
    assert nice_square(3.0) == pytest.approx(1.0)
    for normal in ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.3, -0.2, 0.9)):
        n, e1, e2 = plane_frame(normal)
        m = torch.stack([e1, e2, n])
        assert torch.allclose(m @ m.T, torch.eye(3, dtype=F64), atol=1e-12)
        assert torch.allclose(torch.linalg.cross(e1, e2), n, atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(background="purple"), "unknown background"),
    (dict(background=(0.1, 2.0, 0.0)), "background colour"),
    (dict(ground_point=(0.0, 0.0)), "ground_point"),
    (dict(ground_point=(0.0, 0.0, 0.0), ground_normal=(0.0, 0.0, 0.0)), "normal"),
    (dict(ground_point=(0.0, 0.0, 0.0), square=0.0), "square"),
    (dict(ground_point=(0.0, 0.0, 0.0), shadow_points=torch.zeros(0, 3)), "shadow points"),
    (dict(ground_point=(0.0, 0.0, 0.0), shadow_strength=2.0), "shadow_strength"),
])
def test_bad_arguments_are_one_clear_value_error(kwargs, message):
    vm, K = camera((0.0, 0.5, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=message):
        composite_backdrop(*empty(), vm, K, **kwargs)


def test_bad_shapes_are_value_errors():
    vm, K = camera((0.0, 0.5, 1.0), (0.0, 0.0, 0.0))
    rgb, alpha, depth = empty()
    with pytest.raises(ValueError, match=r"alpha must be \[C,H,W,1\]"):
        composite_backdrop(rgb, alpha[..., 0], depth, vm, K)
    with pytest.raises(ValueError, match="depth"):
        composite_backdrop(rgb, alpha, depth[:, :-1], vm, K)
    with pytest.raises(ValueError, match="viewmats"):
        composite_backdrop(rgb, alpha, depth, vm.expand(2, 4, 4), K)
    with pytest.raises(ValueError, match="rgb"):
        composite_backdrop(rgb[0], alpha, depth, vm, K)
    with pytest.raises(ValueError, match="extent"):
        nice_square(-1.0)
    assert math.isfinite(nice_square(1e-7))


# ------------------------------------------------------------------ `sgaus simulate --background/--ground-grid`
def resting_asset():
    """A 3 x 3 x 3 lattice of anchors (4 cm apart) resting on the ground y = 0 under zero gravity,
    with red Gaussians on it."""
    from conftest import make_asset
    from pipeline.data.gaussians import Gaussians

    side = torch.linspace(-0.04, 0.04, 3)
    anchors = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    anchors[:, 1] += 0.05
    g = Gaussians(means=anchors.clone(), log_scales=torch.full((27,), math.log(0.008)),
                  colors=torch.tensor([[0.9, 0.1, 0.1]]).repeat(27, 1), opacity_logits=torch.full((27,), 3.0))
    asset = make_asset(anchors, g, k_neighbors=6, n_c=3, substeps=10, frames=2, n_b=1)
    return asset.with_physics(gravity=(0.0, 0.0, 0.0))


def test_sgaus_simulate_draws_the_ground_and_the_background(tmp_path):
    import json

    import imageio.v2 as imageio
    from click.testing import CliRunner

    from cli import cli
    from pipeline.asset import save_asset

    save_asset(tmp_path / "run" / "asset", resting_asset())

    def frame(*args):
        out = tmp_path / ("sim" + "".join(args).replace("-", "_"))
        r = CliRunner().invoke(cli, ["--arch", "cpu", "simulate", str(tmp_path / "run"), "--orbit", "--size", "48",
                                     "--quiet", "--out", str(out), *args])
        assert r.exit_code == 0, r.output
        return imageio.imread(out / "frames" / "000.png").astype(float) / 255, json.loads(
            (out / "simulation.json").read_text())

    plain, meta = frame("--no-ground-grid", "--background", "white")
    assert not meta["ground_grid"] and meta["background"] == "white"
    uncovered = (plain > 0.99).all(-1)  # white: nothing of the object there
    assert uncovered[-8:].sum() > 40 and (plain[24, 24] - [0.9, 0.1, 0.1]).max() < 0.1  # margins, the red object
    ground, meta = frame()  # the scene has a ground: the grid is on by default, over black
    assert meta["ground_grid"] and meta["background"] == "black"
    # the lower margin (in front of the object, near the camera) is now grey ground ...
    below = ground[-8:][uncovered[-8:]]
    assert (below.max(-1) - below.min(-1)).max() < 0.02 and 0.25 < below.mean() < 0.6
    assert below[:, 0].std() > 0.03  # ... in squares, not a flat colour
    assert (ground[24, 24] - [0.9, 0.1, 0.1]).max() < 0.1  # and the object stands in front of it


def test_ground_grid_without_a_ground_is_one_clear_error(tmp_path):
    from click.testing import CliRunner

    from cli import cli
    from pipeline.asset import save_asset

    save_asset(tmp_path / "run" / "asset", resting_asset())
    out = tmp_path / "never"
    r = CliRunner().invoke(cli, ["--arch", "cpu", "simulate", str(tmp_path / "run"), "--orbit", "--no-ground",
                                 "--ground-grid", "--out", str(out)])
    assert r.exit_code == 1 and "needs a ground plane" in r.output and "Traceback" not in r.output
    assert not out.exists()
    r = CliRunner().invoke(cli, ["--arch", "cpu", "simulate", str(tmp_path / "run"), "--orbit", "--background",
                                 "purple", "--out", str(out)])
    assert r.exit_code == 2 and "purple" in r.output and not out.exists()
