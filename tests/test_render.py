"""Renderer tests: the tiled Taichi path against the dense reference (images and gradients),
analytic cases, finite differences, input errors, and the image losses."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.data.cameras import look_at, orbit_cameras
from render import l1_dssim_loss, psnr, rasterization, rasterization_reference, ssim
from render.projection import project_gaussians

F64 = torch.float64
W, H = 40, 30  # not multiples of the 16-pixel tile: partial tiles on the right and bottom


def _scene(rng, n, anisotropic, spread=0.8, dtype=F64):
    means = torch.randn(n, 3, generator=rng, dtype=dtype) * spread
    if anisotropic:
        scales = torch.rand(n, 3, generator=rng, dtype=dtype) * 0.12 + 0.02
        quats = torch.randn(n, 4, generator=rng, dtype=dtype)
    else:
        scales = torch.rand(n, generator=rng, dtype=dtype) * 0.1 + 0.03
        quats = None
    opacities = torch.rand(n, generator=rng, dtype=dtype) * 0.95 + 0.05
    colors = torch.rand(n, 3, generator=rng, dtype=dtype)
    return means, scales, quats, opacities, colors


def _cameras(dtype=F64):
    # an orbit ring, plus one camera standing inside the cloud (Gaussians behind it and
    # closer than the near plane) and one looking past the cloud (most of it off-screen)
    ring = orbit_cameras(2, 3.0, width=W, height=H, fov_deg=55, elevation_jitter_deg=15)
    extra = torch.stack([look_at((0.3, 0.1, 0.2), (0.0, 0.0, 3.0)), look_at((2.0, 0.5, 2.5), (2.5, 0.0, 0.0))])
    viewmats = torch.cat([ring.viewmats, extra]).to(dtype)
    Ks = torch.cat([ring.Ks, ring.Ks[:2]]).to(dtype)
    return viewmats, Ks


def _render_and_grads(fn, means, scales, quats, opacities, colors, viewmats, Ks, bg, seed=7):
    leaves = [t.clone().requires_grad_() for t in (means, scales, opacities, colors, viewmats)]
    q = None if quats is None else quats.clone().requires_grad_()
    rgb, alpha, depth = fn(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], Ks, W, H, background=bg, quats=q)
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in (rgb, alpha, depth)]
    loss = sum((o * v).sum() for o, v in zip((rgb, alpha, depth), vs))
    inputs = leaves + ([q] if q is not None else [])
    return (rgb, alpha, depth), torch.autograd.grad(loss, inputs)


def _taichi(*args, **kw):
    return rasterization(*args, backend="taichi", **kw)


@pytest.mark.parametrize("anisotropic", [False, True])
def test_tiled_matches_reference(rng, anisotropic):
    means, scales, quats, opacities, colors = _scene(rng, 160, anisotropic)
    viewmats, Ks = _cameras()
    bg = torch.tensor([0.2, 0.5, 0.1], dtype=F64)
    # the scene really has Gaussians behind the camera / inside the near plane and off-screen
    m2d, _cov, z, valid = project_gaussians(means, scales, quats, viewmats, Ks, W, H, 0.01)
    assert (~valid[2]).sum() > 10
    inside = (m2d[..., 0] >= 0) & (m2d[..., 0] < W) & (m2d[..., 1] >= 0) & (m2d[..., 1] < H)
    assert (valid & ~inside).sum() > 50

    ref_out, ref_grads = _render_and_grads(rasterization_reference, means, scales, quats, opacities, colors,
                                           viewmats, Ks, bg)
    out, grads = _render_and_grads(_taichi, means, scales, quats, opacities, colors, viewmats, Ks, bg)
    assert ref_out[1].amax() > 0.99 and (ref_out[1] == 0).any()  # saturated and empty pixels both occur
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    names = ["means", "scales", "opacities", "colors", "viewmats", "quats"]
    for name, a, b in zip(names, grads, ref_grads):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9 * b.abs().max().item(), msg=name)


def test_tiled_matches_reference_with_early_stop(rng):
    """A dense stack of nearly opaque Gaussians: compositing stops at T < 1e-4 in both paths."""
    n = 60
    means = torch.randn(n, 3, generator=rng, dtype=F64) * 0.05
    scales = torch.full((n,), 0.15, dtype=F64)
    opacities = 0.8 + 0.2 * torch.rand(n, generator=rng, dtype=F64)
    colors = torch.rand(n, 3, generator=rng, dtype=F64)
    viewmats, Ks = _cameras()
    ref_out, ref_grads = _render_and_grads(rasterization_reference, means, scales, None, opacities, colors,
                                           viewmats[:2], Ks[:2], None)
    out, grads = _render_and_grads(_taichi, means, scales, None, opacities, colors, viewmats[:2], Ks[:2], None)
    assert ref_out[1].amax() > 1 - 2e-4
    for a, b in zip(out + grads, ref_out + ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9 * max(b.abs().max().item(), 1.0))


def test_float32_inputs_render_in_float32(rng):
    means, scales, quats, opacities, colors = _scene(rng, 80, True, dtype=torch.float32)
    viewmats, Ks = _cameras(torch.float32)
    rgb, alpha, depth = rasterization(means, scales, opacities, colors, viewmats, Ks, W, H, quats=quats)
    assert rgb.dtype == torch.float32 and rgb.shape == (4, H, W, 3) and alpha.shape == depth.shape == (4, H, W, 1)
    ref = rasterization_reference(means.double(), scales.double(), opacities.double(), colors.double(),
                                  viewmats.double(), Ks.double(), W, H, quats=quats.double())
    torch.testing.assert_close(rgb.double(), ref[0], rtol=0, atol=2e-4)


def test_single_gaussian_peak_and_radius():
    """One Gaussian straight ahead: peak = opacity x colour at the centre pixel, screen
    std-dev = sqrt((f s / z)^2 + 0.3), nothing beyond 3 sigma, depth = z where covered."""
    side, f, z, s, op = 41, 40.0, 2.0, 0.1, 0.7
    K = torch.tensor([[f, 0, side / 2], [0, f, side / 2], [0, 0, 1]], dtype=F64)[None]
    color = torch.tensor([[0.2, 0.6, 1.0]], dtype=F64)
    rgb, alpha, depth = rasterization(torch.tensor([[0.0, 0.0, z]], dtype=F64), torch.tensor([s], dtype=F64),
                                      torch.tensor([op], dtype=F64), color, torch.eye(4, dtype=F64)[None], K,
                                      side, side)
    c = side // 2  # pixel 20 has its centre at 20.5 = cx
    torch.testing.assert_close(rgb[0, c, c], op * color[0])
    sigma = math.sqrt((f * s / z) ** 2 + 0.3)
    row = alpha[0, c, :, 0]
    for dx in range(1, 8):
        expected = op * math.exp(-0.5 * dx * dx / sigma**2) if dx <= 3 * sigma else 0.0
        if expected < 1 / 255:
            expected = 0.0
        assert row[c + dx].item() == pytest.approx(expected, abs=1e-12), dx
        assert row[c - dx].item() == pytest.approx(expected, abs=1e-12), dx
    radius = int((row > 0).sum().item()) // 2
    assert radius == math.floor(3 * sigma)
    assert torch.allclose(depth[alpha > 0], torch.tensor(z, dtype=F64))
    assert (depth[alpha == 0] == 0).all()


@pytest.mark.parametrize("backend", ["taichi", "reference"])
def test_two_gaussians_composite_front_to_back(backend):
    side, f = 33, 30.0
    K = torch.tensor([[f, 0, side / 2], [0, f, side / 2], [0, 0, 1]], dtype=F64)[None]
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=F64)
    opacities = torch.tensor([0.6, 0.9], dtype=F64)
    scales = torch.tensor([0.2, 0.3], dtype=F64)

    def centre(z_red, z_green):
        means = torch.tensor([[0, 0, z_red], [0, 0, z_green]], dtype=F64)
        rgb, alpha, depth = rasterization(means, scales * torch.tensor([z_red, z_green], dtype=F64) / 2, opacities,
                                          colors, torch.eye(4, dtype=F64)[None], K, side, side, backend=backend)
        c = side // 2
        return rgb[0, c, c], alpha[0, c, c, 0], depth[0, c, c, 0]

    rgb, alpha, depth = centre(2.0, 3.0)  # red in front
    torch.testing.assert_close(rgb, torch.tensor([0.6, 0.4 * 0.9, 0], dtype=F64))
    rgb2, alpha2, depth2 = centre(3.0, 2.0)  # green in front
    torch.testing.assert_close(rgb2, torch.tensor([0.1 * 0.6, 0.9, 0], dtype=F64))
    assert rgb[0] > rgb[1] and rgb2[1] > rgb2[0]
    torch.testing.assert_close(alpha, alpha2)
    torch.testing.assert_close(depth, torch.tensor((0.6 * 2 + 0.36 * 3) / 0.96, dtype=F64))


def test_projection_matches_autograd_jacobian():
    """Eq. 2: Sigma' = J W Sigma W^T J^T + 0.3 I with J the Jacobian of the perspective map."""
    viewmat = look_at((0.5, -0.3, -3.0), (0.1, 0.2, 0.0)).to(F64)
    K = torch.tensor([[50.0, 0, 30], [0, 55.0, 25], [0, 0, 1]], dtype=F64)
    mean = torch.tensor([0.3, -0.1, 0.2], dtype=F64)
    scales = torch.tensor([[0.1, 0.05, 0.2]], dtype=F64)
    quat = torch.tensor([[0.9, 0.1, -0.3, 0.2]], dtype=F64)
    m2d, cov2d, z, valid = project_gaussians(mean[None], scales, quat, viewmat[None], K[None], 60, 50, 0.01)

    def to_pixel(p):
        cam = viewmat[:3, :3] @ p + viewmat[:3, 3]
        return (K @ cam)[:2] / cam[2]

    J = torch.autograd.functional.jacobian(to_pixel, mean)  # d pixel / d world point [2,3]
    qn = quat[0] / quat[0].norm()
    w, x, y, zq = qn
    R = torch.tensor([[1 - 2 * (y * y + zq * zq), 2 * (x * y - w * zq), 2 * (x * zq + w * y)],
                      [2 * (x * y + w * zq), 1 - 2 * (x * x + zq * zq), 2 * (y * zq - w * x)],
                      [2 * (x * zq - w * y), 2 * (y * zq + w * x), 1 - 2 * (x * x + y * y)]], dtype=F64)
    sigma = R @ torch.diag(scales[0] ** 2) @ R.T
    torch.testing.assert_close(cov2d[0, 0], J @ sigma @ J.T + 0.3 * torch.eye(2, dtype=F64))
    torch.testing.assert_close(m2d[0, 0], to_pixel(mean))
    assert valid.all() and z[0, 0] > 0


def test_tiled_gradients_match_finite_differences(rng):
    means, scales, quats, opacities, colors = _scene(rng, 25, True, spread=0.4)
    viewmats, Ks = _cameras()
    viewmats, Ks = viewmats[:1], Ks[:1]
    v = torch.randn(1, H, W, 3, generator=rng, dtype=F64)

    def loss(m, o):
        rgb, alpha, depth = _taichi(m, scales, o, colors, viewmats, Ks, W, H, quats=quats)
        return (rgb * v).sum() + alpha.sum() + 0.1 * depth.sum()

    m, o = means.clone().requires_grad_(), opacities.clone().requires_grad_()
    gm, go = torch.autograd.grad(loss(m, o), (m, o))
    eps = 1e-6
    for i, k in [(0, 0), (3, 1), (7, 2), (11, 0)]:
        dm = torch.zeros_like(means)
        dm[i, k] = eps
        fd = (loss(means + dm, opacities) - loss(means - dm, opacities)) / (2 * eps)
        assert gm[i, k].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-7)
    for i in (1, 5, 9):
        do = torch.zeros_like(opacities)
        do[i] = eps
        fd = (loss(means, opacities + do) - loss(means, opacities - do)) / (2 * eps)
        assert go[i].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-7)
    assert gm.abs().max() > 0 and go.abs().max() > 0


def test_bad_inputs_raise_one_clear_line(monkeypatch):
    means, viewmats, K = torch.zeros(4, 3), torch.eye(4)[None], torch.eye(3)[None]
    ok = dict(scales=torch.ones(4), opacities=torch.ones(4), colors=torch.ones(4, 3))
    with pytest.raises(ValueError, match="means must be"):
        rasterization(torch.zeros(4, 2), **ok, viewmats=viewmats, Ks=K, width=8, height=8)
    with pytest.raises(ValueError, match="scales must be"):
        rasterization(means, torch.ones(4, 2), ok["opacities"], ok["colors"], viewmats, K, 8, 8)
    with pytest.raises(ValueError, match="Ks must be"):
        rasterization(means, **ok, viewmats=viewmats, Ks=torch.eye(3), width=8, height=8)
    with pytest.raises(ValueError, match="unknown backend"):
        rasterization(means, **ok, viewmats=viewmats, Ks=K, width=8, height=8, backend="cuda")
    with pytest.raises(ValueError, match="image size"):
        rasterization(means, **ok, viewmats=viewmats, Ks=K, width=0, height=8)
    from taichi_sim import runtime

    monkeypatch.setitem(runtime._state, "arch", None)
    with pytest.raises(RuntimeError, match="init_taichi"):
        rasterization(means, **ok, viewmats=viewmats, Ks=K, width=8, height=8, backend="taichi")


def test_losses(rng):
    img = torch.rand(2, 24, 24, 3, generator=rng)
    assert torch.isinf(psnr(img[0], img[0])) and psnr(img, img).shape == (2,)
    assert ssim(img[0], img[0]).item() == pytest.approx(1.0, abs=1e-6)
    noisy = (img + 0.1 * torch.randn(img.shape, generator=rng)).clamp(0, 1)
    assert 10 < psnr(noisy[0], img[0]).item() < 30 and ssim(noisy[0], img[0]).item() < 0.99
    assert l1_dssim_loss(img, img).item() == pytest.approx(0.0, abs=1e-6)
    pred = noisy.clone().requires_grad_()
    loss = l1_dssim_loss(pred, img, 0.2)
    (g,) = torch.autograd.grad(loss, pred)
    assert loss.item() > 0 and torch.isfinite(g).all() and g.abs().sum() > 0
    expected = 0.8 * (noisy - img).abs().mean() + 0.2 * (1 - ssim(noisy, img).mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(img[0], img[1, :20])
    with pytest.raises(ValueError, match="lambda_dssim"):
        l1_dssim_loss(img, img, 1.5)


def test_isotropic_projection_matches_general_path(rng):
    """The isotropic branch (s^2 J W W^T J^T written out) against the general matrix path with the
    same scale on all three axes: values and gradients (means, scales, viewmats) agree."""
    means, scales, _q, _o, _c = _scene(rng, 50, False)
    viewmats, Ks = _cameras()
    outs = []
    for expand in (False, True):
        m, s, v = means.clone().requires_grad_(), scales.clone().requires_grad_(), viewmats.clone().requires_grad_()
        m2d, cov, z, valid = project_gaussians(m, s[:, None].expand(-1, 3) if expand else s, None, v, Ks, W, H, 0.01)
        w = torch.randn(cov.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
        loss = (cov * w).sum() + m2d.sum() + z.sum()
        outs.append((m2d, cov, z) + torch.autograd.grad(loss, (m, s, v)))
    for name, a, b in zip(["means2d", "cov2d", "depth", "g_means", "g_scales", "g_viewmats"], *outs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * max(b.abs().max().item(), 1.0), msg=name)


def _tile_edge_scene():
    """One camera looking down +z at a 56 x 40 image (tiles of 16: edges at x = 16, 32, 48 and
    y = 16, 32): Gaussians centred on tile edges and corners, from sub-pixel to several tiles wide,
    round and thin ones crossing edges, and opacities around the 1/255 cut."""
    f, z = 40.0, 2.0
    K = torch.tensor([[f, 0, 0], [0, f, 0], [0, 0, 1]], dtype=F64)[None]  # principal point at the corner
    pix = [(16, 16), (32, 16), (16, 32), (48, 8.5), (8.5, 16), (32, 32), (31.5, 24), (40, 16.25), (16, 0.5),
           (55.5, 39.5), (24, 24), (32, 8)]
    sizes = [0.2, 1.0, 3.0, 6.0, 12.0, 25.0]  # screen std-dev in pixels
    means, scales, opac = [], [], []
    for i, (u, v) in enumerate(pix):
        for j, sd in enumerate(sizes):
            means.append([u * z / f, v * z / f, z + 0.01 * (i * len(sizes) + j)])
            scales.append([sd * z / f, sd * z / f * (0.08 if (i + j) % 3 == 0 else 1.0), sd * z / f])
            opac.append([0.9, 0.3, 0.05, 0.0045, 0.0039, 0.6][(i + j) % 6])  # 0.0039 < 1/255 < 0.0045
    n = len(means)
    quats = torch.tensor([[math.cos(0.3 * k), 0.0, 0.0, math.sin(0.3 * k)] for k in range(n)], dtype=F64)
    colors = torch.rand(n, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    return (torch.tensor(means, dtype=F64), torch.tensor(scales, dtype=F64), quats, torch.tensor(opac, dtype=F64),
            colors, torch.eye(4, dtype=F64)[None], K)


def test_tile_edge_gaussians_match_reference():
    """Culling (each entry visits only its reach ellipse's rows and chords, tiles from its box)
    loses nothing at tile edges and corners: images and gradients equal the dense reference."""
    means, scales, quats, opacities, colors, viewmats, K = _tile_edge_scene()
    w, h = 56, 40
    out, grads, ref_out, ref_grads = None, None, None, None
    for fn in (rasterization_reference, _taichi):
        leaves = [t.clone().requires_grad_() for t in (means, scales, opacities, colors, quats)]
        rgb, alpha, depth = fn(leaves[0], leaves[1], leaves[2], leaves[3], viewmats, K, w, h, quats=leaves[4])
        g = torch.Generator().manual_seed(2)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=F64)).sum() for o in (rgb, alpha, depth))
        result = ((rgb, alpha, depth), torch.autograd.grad(loss, leaves))
        if fn is _taichi:
            out, grads = result
        else:
            ref_out, ref_grads = result
    assert (ref_out[1] > 0).float().mean() > 0.5
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for name, a, b in zip(["means", "scales", "opacities", "colors", "quats"], grads, ref_grads):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9 * b.abs().max().item(), msg=name)


def test_tile_lists_hold_every_contributing_gaussian():
    """Every (pixel, Gaussian) pair that passes the reference's tests (q <= 9, alpha >= 1/255) has
    the Gaussian in that pixel's tile list; Gaussians below alpha 1/255 everywhere are in no list;
    each list runs near to far."""
    from render.projection import ALPHA_MAX, ALPHA_MIN, CUTOFF_MAHALANOBIS2, conic_of
    from render.tiled import TILE, bin_tiles

    means, scales, quats, opacities, colors, viewmats, K = _tile_edge_scene()
    w, h = 56, 40
    m2d, cov, z, valid = project_gaussians(means, scales, quats, viewmats, K, w, h, 0.01)
    conics = conic_of(cov)
    ids, offsets = bin_tiles(m2d, conics, opacities, z, valid, w, h)
    tiles_x = -(-w // TILE)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=F64) + 0.5, torch.arange(w, dtype=F64) + 0.5, indexing="ij")
    dx, dy = xs[..., None] - m2d[0, :, 0], ys[..., None] - m2d[0, :, 1]  # [H,W,N]
    a, b, c = conics[0].unbind(-1)
    q = a * dx * dx + 2 * b * dx * dy + c * dy * dy
    counts = (q <= CUTOFF_MAHALANOBIS2) & (torch.clamp(opacities * torch.exp(-0.5 * q), max=ALPHA_MAX) >= ALPHA_MIN)
    assert counts.any(-1).float().mean() > 0.5
    for py, px in counts.any(-1).nonzero().tolist():
        t = (py // TILE) * tiles_x + px // TILE
        listed = set(ids[offsets[t]:offsets[t + 1]].tolist())
        assert set(counts[py, px].nonzero()[:, 0].tolist()) <= listed, (py, px)
    faint = (opacities < ALPHA_MIN).nonzero()[:, 0]
    assert len(faint) > 0 and not set(faint.tolist()) & set(ids.tolist())
    for t in range(len(offsets) - 1):
        zs = z[0, ids[offsets[t]:offsets[t + 1]].long()]
        assert bool((zs[1:] >= zs[:-1]).all())


def test_depth_order_is_a_stable_argsort():
    from render.tiled import depth_order

    z = torch.tensor([3.0, 2.0, 3.0, 0.5, 2.0, 1e-3, 7.0, 2.0], dtype=torch.float32)
    z = torch.cat([z, torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 5 + 0.01, z])
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(depth_order(z.to(dtype)), torch.argsort(z.to(dtype), stable=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ssim_and_its_gradient_match_pytorch_msssim(rng, dtype):
    """render.losses' SSIM (hand-written gradient) against pytorch-msssim's autograd: per-image
    values, the loss, and gradients for both images."""
    from pytorch_msssim import ssim as msssim

    pred = torch.rand(3, 40, 33, 3, generator=rng, dtype=F64).to(dtype)
    target = (pred + 0.2 * torch.randn(pred.shape, generator=rng, dtype=F64).to(dtype)).clamp(0, 1)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == F64 else dict(rtol=2e-5, atol=1e-6)
    p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
    ours = ssim(p, t)
    g_ours = torch.autograd.grad((ours * torch.tensor([1.0, -2.0, 0.5], dtype=dtype)).sum(), (p, t))
    p2, t2 = pred.clone().requires_grad_(), target.clone().requires_grad_()
    theirs = msssim(p2.permute(0, 3, 1, 2), t2.permute(0, 3, 1, 2), data_range=1.0, size_average=False)
    g_theirs = torch.autograd.grad((theirs * torch.tensor([1.0, -2.0, 0.5], dtype=dtype)).sum(), (p2, t2))
    torch.testing.assert_close(ours, theirs, **tol)
    for a, b in zip(g_ours, g_theirs):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * 10)
    loss = l1_dssim_loss(pred.requires_grad_(), target, 0.2)
    expected = 0.8 * (pred - target).abs().mean() + 0.2 * (1 - msssim(pred.permute(0, 3, 1, 2),
                                                                       target.permute(0, 3, 1, 2), data_range=1.0))
    torch.testing.assert_close(loss, expected, **tol)


@pytest.mark.parametrize("placement", ["centre", "corner", "edge_to_edge", "black"])
def test_loss_on_the_content_box_equals_the_whole_image(rng, placement):
    """l1_dssim_loss computes both terms on the box of non-zero pixels (plus the SSIM window):
    value and gradients (for both images) equal pytorch-msssim and L1 on the whole image, in
    f64, whether the content is centred, in a corner (box clipped by the border), spans the
    image (no crop) or is absent; and the two images' content may lie apart."""
    from pytorch_msssim import ssim as msssim

    pred = torch.zeros(2, 48, 40, 3, dtype=F64)
    target = torch.zeros_like(pred)
    if placement == "centre":
        pred[:, 20:26, 15:22] = torch.rand(2, 6, 7, 3, generator=rng, dtype=F64)
        target[:, 22:30, 18:24] = torch.rand(2, 8, 6, 3, generator=rng, dtype=F64)
    elif placement == "corner":
        pred[1, 40:, 35:] = torch.rand(8, 5, 3, generator=rng, dtype=F64)
        target[0, 44:, 37:] = torch.rand(4, 3, 3, generator=rng, dtype=F64)
    elif placement == "edge_to_edge":
        pred[:, :, 3:5] = torch.rand(2, 48, 2, 3, generator=rng, dtype=F64)
        target[:, 1:2, :] = torch.rand(2, 1, 40, 3, generator=rng, dtype=F64)
    p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
    loss = l1_dssim_loss(p, t, 0.2)
    g_ours = torch.autograd.grad(loss, (p, t))
    p2, t2 = pred.clone().requires_grad_(), target.clone().requires_grad_()
    whole = 0.8 * (p2 - t2).abs().mean() + 0.2 * (1 - msssim(p2.permute(0, 3, 1, 2), t2.permute(0, 3, 1, 2),
                                                              data_range=1.0))
    g_whole = torch.autograd.grad(whole, (p2, t2))
    torch.testing.assert_close(loss, whole, rtol=1e-12, atol=1e-14)
    for a, b in zip(g_ours, g_whole):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    if placement != "black":
        assert loss.item() > 0 and g_whole[0].abs().max() > 0
    l1_only = l1_dssim_loss(pred, target, 0.0)
    torch.testing.assert_close(l1_only, (pred - target).abs().mean(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("threads", [1, 3, 7])
def test_tiles_dealt_round_robin_to_any_thread_count_render_the_same(rng, monkeypatch, threads):
    """The compositing kernels deal tiles to Taichi's threads round-robin (slots beyond the
    last tile do nothing): whatever the thread count they are told, every tile is composited
    exactly once, so images and gradients equal those of the machine's own count, bit for bit
    (4 cameras of 3 x 2 tiles: 24 tiles, not a multiple of 7)."""
    import render.tiled as tiled
    from taichi_sim.runtime import cpu_threads

    means, scales, quats, opacities, colors = _scene(rng, 160, False)
    viewmats, Ks = _cameras()
    args = (means, scales, quats, opacities, colors, viewmats, Ks, None)
    out, grads = _render_and_grads(_taichi, *args)
    monkeypatch.setattr(tiled, "cpu_threads", lambda: threads)
    out2, grads2 = _render_and_grads(_taichi, *args)
    assert cpu_threads() >= 1 and out[1].amax() > 0.5
    for a, b in zip(out + grads, out2 + grads2):
        assert torch.equal(a, b)
