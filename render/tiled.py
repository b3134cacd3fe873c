"""The fast path: tile binning in PyTorch, per-pixel compositing in Taichi.

Stages (one kernel launch per stage, no per-tile Python loop):

1. projection (render.projection, PyTorch autograd) -> per (camera, Gaussian): 2D centre,
   conic, opacity, colour, depth, packed in one [C*N, 10] tensor;
2. tile binning (PyTorch, not differentiated): each visible Gaussian is listed in every
   16x16 tile its 3-sigma ellipse's bounding box touches (the box is exact: +-3 sqrt(Sigma'_xx)
   by +-3 sqrt(Sigma'_yy)); one int64 sort on (tile, depth rank) yields each tile's
   near-to-far list, never a pixels x Gaussians matrix;
3. compositing (Taichi): one task per tile; each pixel walks its tile's list front to back.
   The backward walks the same lists front to back too, getting the colour of everything
   behind a Gaussian as (final colour - colour in front - own share), so it never divides
   the transmittance back up; gradients of each list entry are accumulated by the tile's own
   task (no atomics) and summed per Gaussian with one index_add_.

Taichi must have been initialised (taichi_sim.runtime.init_taichi); the kernels take torch
tensors as ndarrays, so they run in the tensors' precision (f32 or f64).
"""
import taichi as ti
import torch

from render.inputs import finish_images
from render.projection import (ALPHA_MAX, ALPHA_MIN, CUTOFF_MAHALANOBIS2, T_MIN, conic_of,
                               project_gaussians)

TILE = 16  # tile side in pixels
SPREAD = 256  # loop slots per tile in the backward kernel (see there)
# packed per-(camera, Gaussian) parameters, 10 a row: mean2d x, y | conic a, b, c | opacity | r, g, b | z
N_PARAMS = 10


@ti.func
def _mahalanobis2(params: ti.template(), j, fx, fy):
    """d^T Sigma'^-1 d of pixel centre (fx, fy) from list entry j (its conic a, b, c)."""
    dx = fx - params[j, 0]
    dy = fy - params[j, 1]
    return params[j, 2] * dx * dx + 2.0 * params[j, 3] * dx * dy + params[j, 4] * dy * dy


@ti.kernel
def _composite_forward(
    params: ti.types.ndarray(),  # [M, 10] list entries (gathered per tile, near to far)
    tile_offsets: ti.types.ndarray(),  # [n_tiles + 1] int32
    tiles_x: ti.i32,
    tiles_y: ti.i32,
    width: ti.i32,
    height: ti.i32,
    out_rgb: ti.types.ndarray(),  # [C, H, W, 3] foreground colour (no background)
    out_alpha: ti.types.ndarray(),  # [C, H, W]
    out_depth: ti.types.ndarray(),  # [C, H, W] sum T_i alpha_i z_i
    out_end: ti.types.ndarray(),  # [C, H, W] int32: list index after the last one composited
):
    n_tiles = tile_offsets.shape[0] - 1
    per_cam = tiles_x * tiles_y
    for k in range(n_tiles * TILE * TILE):  # one task per pixel, tile-major order
        tile = k // (TILE * TILE)
        cam = tile // per_cam
        ty = (tile % per_cam) // tiles_x
        tx = tile % tiles_x
        start = tile_offsets[tile]
        stop = tile_offsets[tile + 1]
        py = ty * TILE + (k % (TILE * TILE)) // TILE
        px = tx * TILE + k % TILE
        if py < height and px < width:
            fx = px + 0.5
            fy = py + 0.5
            T = 1.0
            r = 0.0
            g = 0.0
            b = 0.0
            dep = 0.0
            end = stop
            for j in range(start, stop):
                q = _mahalanobis2(params, j, fx, fy)
                if q > CUTOFF_MAHALANOBIS2:
                    continue
                a = ti.min(ALPHA_MAX, params[j, 5] * ti.exp(-0.5 * q))
                if a < ALPHA_MIN:
                    continue
                t_next = T * (1.0 - a)
                if t_next < T_MIN:
                    end = j
                    break
                w = a * T
                r += w * params[j, 6]
                g += w * params[j, 7]
                b += w * params[j, 8]
                dep += w * params[j, 9]
                T = t_next
            out_rgb[cam, py, px, 0] = r
            out_rgb[cam, py, px, 1] = g
            out_rgb[cam, py, px, 2] = b
            out_alpha[cam, py, px] = 1.0 - T
            out_depth[cam, py, px] = dep
            out_end[cam, py, px] = end


@ti.kernel
def _composite_backward(
    params: ti.types.ndarray(),  # [M, 10]
    tile_offsets: ti.types.ndarray(),  # [n_tiles + 1]
    tiles_x: ti.i32,
    tiles_y: ti.i32,
    width: ti.i32,
    height: ti.i32,
    rgb: ti.types.ndarray(),  # [C, H, W, 3] forward outputs
    alpha: ti.types.ndarray(),  # [C, H, W]
    depth: ti.types.ndarray(),  # [C, H, W]
    ends: ti.types.ndarray(),  # [C, H, W]
    g_rgb: ti.types.ndarray(),  # [C, H, W, 3] upstream gradients
    g_alpha: ti.types.ndarray(),  # [C, H, W]
    g_depth: ti.types.ndarray(),  # [C, H, W]
    g_params: ti.types.ndarray(),  # [M, 10] out: gradient per list entry (zero-initialised)
):
    n_tiles = tile_offsets.shape[0] - 1
    per_cam = tiles_x * tiles_y
    # One task per tile (its pixels in turn), so the tile's list entries are accumulated by a
    # single thread and need no atomics. Taichi's CPU backend hands out a parallel loop in
    # chunks of at least 512 iterations, so a loop over just the tiles would run on one core:
    # the loop runs over SPREAD slots per tile and only the first slot of each tile works.
    for k in range(n_tiles * SPREAD):
        if k % SPREAD != 0:
            continue
        tile = k // SPREAD
        cam = tile // per_cam
        ty = (tile % per_cam) // tiles_x
        tx = tile % tiles_x
        start = tile_offsets[tile]
        for ly, lx in ti.ndrange(TILE, TILE):
            py = ty * TILE + ly
            px = tx * TILE + lx
            if py < height and px < width:
                fx = px + 0.5
                fy = py + 0.5
                end = ends[cam, py, px]
                gr = g_rgb[cam, py, px, 0]
                gg = g_rgb[cam, py, px, 1]
                gb = g_rgb[cam, py, px, 2]
                gd = g_depth[cam, py, px]
                t_final = 1.0 - alpha[cam, py, px]
                ga_final = g_alpha[cam, py, px] * t_final  # dL/dA * T_final
                # colour of what lies behind the current Gaussian, updated as we walk forward
                rest_r = rgb[cam, py, px, 0] * 1.0
                rest_g = rgb[cam, py, px, 1] * 1.0
                rest_b = rgb[cam, py, px, 2] * 1.0
                rest_d = depth[cam, py, px] * 1.0
                T = 1.0
                for j in range(start, end):
                    dx = fx - params[j, 0]
                    dy = fy - params[j, 1]
                    q = params[j, 2] * dx * dx + 2.0 * params[j, 3] * dx * dy + params[j, 4] * dy * dy
                    if q > CUTOFF_MAHALANOBIS2:
                        continue
                    G = ti.exp(-0.5 * q)
                    op = params[j, 5]
                    raw = op * G
                    a = ti.min(ALPHA_MAX, raw)
                    if a < ALPHA_MIN:
                        continue
                    w = a * T
                    cr, cg, cb, cz = params[j, 6], params[j, 7], params[j, 8], params[j, 9]
                    rest_r -= w * cr
                    rest_g -= w * cg
                    rest_b -= w * cb
                    rest_d -= w * cz
                    g_params[j, 6] = g_params[j, 6] + gr * w
                    g_params[j, 7] = g_params[j, 7] + gg * w
                    g_params[j, 8] = g_params[j, 8] + gb * w
                    g_params[j, 9] = g_params[j, 9] + gd * w
                    if raw < ALPHA_MAX:
                        inv = 1.0 / (1.0 - a)
                        g_a = (gr * (cr * T - rest_r * inv) + gg * (cg * T - rest_g * inv)
                               + gb * (cb * T - rest_b * inv) + gd * (cz * T - rest_d * inv) + ga_final * inv)
                        g_params[j, 5] = g_params[j, 5] + g_a * G
                        g_q = -0.5 * g_a * raw  # dL/dq = dL/da * op * dG/dq
                        g_params[j, 2] = g_params[j, 2] + g_q * dx * dx
                        g_params[j, 3] = g_params[j, 3] + g_q * 2.0 * dx * dy
                        g_params[j, 4] = g_params[j, 4] + g_q * dy * dy
                        # d = pixel - mean, so dq/dmean = -dq/dd
                        g_params[j, 0] = g_params[j, 0] - g_q * 2.0 * (params[j, 2] * dx + params[j, 3] * dy)
                        g_params[j, 1] = g_params[j, 1] - g_q * 2.0 * (params[j, 3] * dx + params[j, 4] * dy)
                    T = T * (1.0 - a)


class _Composite(torch.autograd.Function):
    """Compositing of packed per-(camera, Gaussian) parameters over binned tiles."""

    @staticmethod
    def forward(ctx, packed, entry_ids, tile_offsets, n_cams, width, height):
        tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
        params = packed.detach().index_select(0, entry_ids).contiguous()
        dtype, device = packed.dtype, packed.device
        rgb = torch.zeros(n_cams, height, width, 3, dtype=dtype, device=device)
        alpha = torch.zeros(n_cams, height, width, dtype=dtype, device=device)
        depth = torch.zeros(n_cams, height, width, dtype=dtype, device=device)
        ends = torch.zeros(n_cams, height, width, dtype=torch.int32, device=device)
        if params.shape[0] > 0:
            _composite_forward(params, tile_offsets, tiles_x, tiles_y, width, height, rgb, alpha, depth, ends)
        ctx.save_for_backward(params, entry_ids, tile_offsets, rgb, alpha, depth, ends)
        ctx.dims = (tiles_x, tiles_y, width, height, packed.shape[0])
        return rgb, alpha[..., None], depth[..., None]

    @staticmethod
    def backward(ctx, g_rgb, g_alpha, g_depth):
        params, entry_ids, tile_offsets, rgb, alpha, depth, ends = (t.detach() for t in ctx.saved_tensors)
        tiles_x, tiles_y, width, height, n_packed = ctx.dims
        g_packed = torch.zeros(n_packed, N_PARAMS, dtype=params.dtype, device=params.device)
        if params.shape[0] > 0:
            g_params = torch.zeros_like(params)
            _composite_backward(
                params, tile_offsets, tiles_x, tiles_y, width, height, rgb, alpha, depth, ends,
                g_rgb.contiguous(), g_alpha[..., 0].contiguous(), g_depth[..., 0].contiguous(), g_params,
            )
            g_packed.index_add_(0, entry_ids, g_params)
        return g_packed, None, None, None, None, None


def bin_tiles(means2d, cov2d, depths, valid, width, height):
    """Tile lists for the flattened (camera, Gaussian) entries. Returns ``entry_ids`` [M]
    (index into C*N, sorted by tile then depth) and ``tile_offsets`` [C*tiles + 1] int32."""
    n_cams, n = depths.shape
    tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
    with torch.no_grad():
        mx, my = means2d[..., 0].reshape(-1), means2d[..., 1].reshape(-1)
        # exact bounding box of the 3-sigma ellipse, padded a hair against rounding
        rx = 3.0 * cov2d[..., 0, 0].reshape(-1).sqrt() * 1.001 + 1e-3
        ry = 3.0 * cov2d[..., 1, 1].reshape(-1).sqrt() * 1.001 + 1e-3
        x0 = torch.floor((mx - rx) / TILE).clamp(-1, tiles_x).long().clamp_min(0)
        x1 = torch.floor((mx + rx) / TILE).clamp(-1, tiles_x).long().clamp_max(tiles_x - 1)
        y0 = torch.floor((my - ry) / TILE).clamp(-1, tiles_y).long().clamp_min(0)
        y1 = torch.floor((my + ry) / TILE).clamp(-1, tiles_y).long().clamp_max(tiles_y - 1)
        span_x = (x1 - x0 + 1).clamp_min(0)
        counts = span_x * (y1 - y0 + 1).clamp_min(0)
        counts = torch.where(valid.reshape(-1) & torch.isfinite(rx) & torch.isfinite(ry) & torch.isfinite(mx)
                             & torch.isfinite(my), counts, torch.zeros_like(counts))
        total = int(counts.sum())
        entry = torch.repeat_interleave(torch.arange(n_cams * n, device=depths.device), counts)
        first = torch.cumsum(counts, 0) - counts
        k = torch.arange(total, device=depths.device) - first[entry]
        sx = span_x[entry].clamp_min(1)
        tile_x = x0[entry] + k % sx
        tile_y = y0[entry] + k // sx
        cam = entry // n
        tile = (cam * tiles_y + tile_y) * tiles_x + tile_x
        rank = torch.empty(n_cams * n, dtype=torch.long, device=depths.device)
        rank[torch.argsort(depths.reshape(-1), stable=True)] = torch.arange(n_cams * n, device=depths.device)
        keys = tile * (n_cams * n) + rank[entry]
        keys, order = torch.sort(keys)
        entry_ids = entry[order]
        per_tile = torch.bincount(tile[order], minlength=n_cams * tiles_x * tiles_y)
        tile_offsets = torch.zeros(per_tile.numel() + 1, dtype=torch.int32, device=depths.device)
        tile_offsets[1:] = torch.cumsum(per_tile, 0)
    return entry_ids, tile_offsets


def rasterize_tiled(means, scales, opacities, colors, viewmats, Ks, width, height, background, quats, near_plane):
    """Tiled Taichi backend of :func:`render.rasterization` (inputs already checked)."""
    from taichi_sim.runtime import require_taichi

    require_taichi()
    n_cams, n = viewmats.shape[0], means.shape[0]
    means2d, cov2d, depths, valid = project_gaussians(means, scales, quats, viewmats, Ks, width, height, near_plane)
    entry_ids, tile_offsets = bin_tiles(means2d, cov2d, depths, valid, width, height)
    packed = torch.cat(
        [means2d, conic_of(cov2d), opacities[None, :, None].expand(n_cams, n, 1),
         colors[None].expand(n_cams, n, 3), depths[..., None]],
        dim=-1,
    ).reshape(n_cams * n, N_PARAMS)
    rgb_fg, alpha, depth_sum = _Composite.apply(packed, entry_ids, tile_offsets, n_cams, width, height)
    return finish_images(rgb_fg, alpha, depth_sum, background)
