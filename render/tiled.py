"""The fast path: tile binning and per-pixel compositing in Taichi, projection in PyTorch.

Stages (one kernel launch per stage, no per-tile Python loop):

1. projection (render.projection, PyTorch autograd) -> per (camera, Gaussian): 2D centre,
   conic, opacity, colour, depth, packed in one [C*N, 10] tensor;
2. tile binning (not differentiated): each visible Gaussian is listed in every 16x16 tile that
   the bounding box of its reach ellipse touches (q <= min(9, 2 ln(255 opacity)): the 3-sigma
   cut, tighter for faint Gaussians, none for opacity < 1/255; entry_reach); the entries are put
   in depth order by one int64 sort (depth bits and index, depth_order), then counted per tile
   and appended to their tiles' lists by two small Taichi kernels (the append in one serial
   pass, so the lists are deterministic), never a pixels x Gaussians matrix;
3. compositing (Taichi): one task per tile (taichi_sim.runtime.task_spread; left to itself,
   Taichi's CPU backend runs 512 tiles per task, a whole 256x256 image on one core), walking the
   tile's list near to far once; each list entry visits only the pixels of its own ellipse (row by
   row, the chord of each row solved from the conic, cut at q <= min(9, 2 ln(255 opacity)): beyond
   that neither the 3-sigma cut nor alpha >= 1/255 lets it count), so the work is the Gaussians'
   footprints, not tile list length times tile area. The pixels' running sums (T, colour, depth,
   where compositing stopped) live in the output arrays; every pixel still sees the same Gaussians
   in the same order with the same tests as the reference (render.reference). The backward walks
   the same lists near to far too, getting the colour of everything behind a Gaussian as (final
   colour - colour in front - own share), so it never divides the transmittance back up; each list
   entry's gradient is summed over its pixels in registers by the tile's own task (no atomics),
   then per Gaussian with one index_add_.

Taichi must have been initialised (taichi_sim.runtime.init_taichi); the kernels take torch
tensors as ndarrays, so they run in the tensors' precision (f32 or f64).
"""
import taichi as ti
import torch

from render.inputs import finish_images
from render.projection import (ALPHA_MAX, ALPHA_MIN, CUTOFF_MAHALANOBIS2, T_MIN, conic_of,
                               project_gaussians)
from taichi_sim.launch import fast
from taichi_sim.runtime import cpu_threads, task_spread

TILE = 16  # tile side in pixels
# padding of an entry's reach (see _reach): relative and absolute in q, and per unit of the terms of q
REACH_REL = 1e-3
REACH_TERMS = 1e-5
SPAN_PAD = 1e-3  # pixels per pixel of half-chord added to each row's span
STATE = 10  # floats of per-pixel state in the backward kernel
# packed per-(camera, Gaussian) parameters, 10 a row: mean2d x, y | conic a, b, c | opacity | r, g, b | z
N_PARAMS = 10


@ti.func
def _reach(op, ca, cb, cc, det):
    """The q = d^T Sigma'^-1 d below which list entry (opacity op, conic a, b, c, det = ac - b^2)
    can count at a pixel: q <= 9 and op exp(-q/2) >= 1/255, i.e. q <= min(9, 2 ln(255 op)),
    padded so that no pixel the exact per-pixel tests accept falls outside (relative and absolute
    rounding of q, which grows with the terms a dx^2, c dy^2 over the ellipse). Negative when the
    entry can count nowhere (op < 1/255 or a degenerate conic)."""
    reach = -1.0
    if op >= ALPHA_MIN and det > 0.0 and ca > 0.0 and cc > 0.0:
        q = ti.min(CUTOFF_MAHALANOBIS2, 2.0 * ti.log(op / ALPHA_MIN))
        extent2 = q * (ca + cc) / det + 1.0  # >= the squared radius in pixels, + 1
        reach = q * (1.0 + REACH_REL) + REACH_REL + REACH_TERMS * (ca + 2.0 * ti.abs(cb) + cc) * extent2
    return reach


@ti.func
def _slots(n_tiles, threads):
    """Loop slots for n_tiles dealt round-robin to ``threads``: a multiple of threads >= n_tiles."""
    return (n_tiles + threads - 1) // threads * threads


@ti.func
def _interleaved(k, n_tiles, threads):
    """The tile of loop slot k (n_tiles or more: none). Taichi's CPU backend gives each of its
    threads one contiguous part of a parallel loop, so tiles in their natural order left the
    object's tiles, which lie together, to one or two threads (the compositing kernels ran at 1.1
    cores of 2 on a real object); slot k of part k // chunk holds tile (k % chunk) threads +
    k // chunk, so every thread gets every threads-th tile of the image."""
    chunk = (n_tiles + threads - 1) // threads
    return (k % chunk) * threads + k // chunk


@ti.func
def _tile_box(tile, tiles_x, tiles_y, width, height):
    """Tile ``tile`` (camera after camera, rows of tiles_x): the first image row of its camera in
    the stacked [C*H, W] pixels, and its pixel box [x0, x1) x [y0, y1), clipped to the image."""
    per_cam = tiles_x * tiles_y
    y0 = ((tile % per_cam) // tiles_x) * TILE
    x0 = (tile % tiles_x) * TILE
    return (tile // per_cam) * height, x0, y0, ti.min(x0 + TILE, width), ti.min(y0 + TILE, height)


@ti.func
def _clamped_range(lo_f, hi_f, lo, hi):
    """Integers i in [lo, hi) with lo_f <= i + 0.5 <= hi_f, as (first, last + 1): the pixels whose
    centres lie in [lo_f, hi_f], clipped to the tile. Clamped in floating point before the cast."""
    first = ti.cast(ti.ceil(ti.max(lo_f - 0.5, lo - 1.0)), ti.i32)
    last = ti.cast(ti.floor(ti.min(hi_f - 0.5, hi + 0.0)), ti.i32)
    return ti.Vector([ti.max(first, lo), ti.min(last + 1, hi)])


@ti.func
def _entry(packed: ti.template(), e):
    """Row ``e`` of the packed parameters (centre, conic, opacity, colour, depth), the conic's
    determinant and the entry's reach (:func:`_reach`)."""
    mx, my = packed[e, 0], packed[e, 1]
    ca, cb, cc = packed[e, 2], packed[e, 3], packed[e, 4]
    op = packed[e, 5]
    det = ca * cc - cb * cb
    return (mx, my, ca, cb, cc, op, packed[e, 6], packed[e, 7], packed[e, 8], packed[e, 9], det,
            _reach(op, ca, cb, cc, det))


@ti.func
def _entry_rows(my, ca, det, reach, y0, y1):
    """1 / a of the entry's conic and the rows [first, last) of the tile [y0, y1) that its q = reach
    ellipse covers (its half-height is sqrt(reach a / det))."""
    ry = ti.sqrt(reach * ca / det)
    return 1.0 / ca, _clamped_range(my - ry, my + ry, y0, y1)


@ti.func
def _row_span(py, mx, my, ca, cb, det, reach, inv_ca, x0, x1):
    """For image row ``py``: dy (the row's centre minus the entry's) and the columns [first, last)
    of the tile [x0, x1) that the entry's q = reach ellipse covers on that row, padded (the chord
    solved from the conic; empty when the row misses the ellipse)."""
    dy = (py + 0.5) - my
    disc = ca * reach - det * dy * dy
    cols = ti.Vector([x0, x0])
    if disc >= 0.0:
        half = ti.sqrt(disc) * inv_ca
        centre = mx - cb * dy * inv_ca
        pad = SPAN_PAD * (1.0 + half)
        cols = _clamped_range(centre - half - pad, centre + half + pad, x0, x1)
    return dy, cols


@fast
@ti.kernel
def _composite_forward(
    packed: ti.types.ndarray(),  # [C*N, 10] per (camera, Gaussian) parameters
    entry_ids: ti.types.ndarray(),  # [M] int32: the tiles' lists (rows of packed), near to far
    tile_offsets: ti.types.ndarray(),  # [n_tiles + 1] int32
    tiles_x: ti.i32,
    tiles_y: ti.i32,
    width: ti.i32,
    height: ti.i32,
    threads: ti.i32,  # Taichi's CPU threads (runtime.cpu_threads; 1 on CUDA): tiles dealt round-robin
    out_rgb: ti.types.ndarray(),  # [C*H*W*3] foreground colour (no background)
    out_alpha: ti.types.ndarray(),  # [C*H*W]
    out_depth: ti.types.ndarray(),  # [C*H*W] sum T_i alpha_i z_i
    out_end: ti.types.ndarray(),  # [C*H*W] int32: list index after the last one composited
):
    n_tiles = tile_offsets.shape[0] - 1
    spread = ti.static(task_spread(1))
    for ix in range(_slots(n_tiles, threads) * spread):  # one task per tile; its pixels' sums live in the outputs
        tile = n_tiles  # the slot's tile, computed for the first index of each slot only (two divisions)
        if ix % spread == 0:
            tile = _interleaved(ix // spread, n_tiles, threads)
        if tile < n_tiles:
            w_img = width
            cam_base, x0, y0, x1, y1 = _tile_box(tile, tiles_x, tiles_y, width, height)
            start = tile_offsets[tile]
            stop = tile_offsets[tile + 1]
            for py, px in ti.ndrange((y0, y1), (x0, x1)):
                pix = (cam_base + py) * w_img + px
                out_rgb[3 * pix] = 0.0
                out_rgb[3 * pix + 1] = 0.0
                out_rgb[3 * pix + 2] = 0.0
                out_alpha[pix] = 1.0  # the transmittance T until the tile is done
                out_depth[pix] = 0.0
                out_end[pix] = stop
            active = (y1 - y0) * (x1 - x0)  # pixels still compositing
            for j in range(start, stop):
                if active == 0:
                    break
                mx, my, ca, cb, cc, op, cr, cg, cbl, cz, det, reach = _entry(packed, entry_ids[j])
                if reach >= 0.0:
                    inv_ca, rows = _entry_rows(my, ca, det, reach, y0, y1)
                    for py in range(rows[0], rows[1]):
                        dy, cols = _row_span(py, mx, my, ca, cb, det, reach, inv_ca, x0, x1)
                        row = (cam_base + py) * w_img
                        for px in range(cols[0], cols[1]):
                            pix = row + px
                            if out_end[pix] == stop:  # still compositing
                                dx = (px + 0.5) - mx
                                q = ca * dx * dx + 2.0 * cb * dx * dy + cc * dy * dy
                                if q <= CUTOFF_MAHALANOBIS2:
                                    a = ti.min(ALPHA_MAX, op * ti.exp(-0.5 * q))
                                    if a >= ALPHA_MIN:
                                        T = out_alpha[pix]
                                        t_next = T * (1.0 - a)
                                        if t_next < T_MIN:
                                            out_end[pix] = j
                                            active = active - 1
                                        else:
                                            w = a * T  # (x = x + ..., as += would be atomic)
                                            out_rgb[3 * pix] = out_rgb[3 * pix] + w * cr
                                            out_rgb[3 * pix + 1] = out_rgb[3 * pix + 1] + w * cg
                                            out_rgb[3 * pix + 2] = out_rgb[3 * pix + 2] + w * cbl
                                            out_depth[pix] = out_depth[pix] + w * cz
                                            out_alpha[pix] = t_next
            for py, px in ti.ndrange((y0, y1), (x0, x1)):
                pix = (cam_base + py) * w_img + px
                out_alpha[pix] = 1.0 - out_alpha[pix]


@fast
@ti.kernel
def _composite_backward(
    packed: ti.types.ndarray(),  # [C*N, 10]
    entry_ids: ti.types.ndarray(),  # [M] int32
    tile_offsets: ti.types.ndarray(),  # [n_tiles + 1]
    tiles_x: ti.i32,
    tiles_y: ti.i32,
    width: ti.i32,
    height: ti.i32,
    threads: ti.i32,
    rgb: ti.types.ndarray(),  # [C*H*W*3] forward outputs
    alpha: ti.types.ndarray(),  # [C*H*W]
    depth: ti.types.ndarray(),  # [C*H*W]
    ends: ti.types.ndarray(),  # [C*H*W]
    g_rgb: ti.types.ndarray(),  # [C*H*W*3] upstream gradients
    g_alpha: ti.types.ndarray(),  # [C*H*W]
    g_depth: ti.types.ndarray(),  # [C*H*W]
    state: ti.types.ndarray(),  # [C*H*W*STATE] scratch: per-pixel walk state (see below)
    g_params: ti.types.ndarray(),  # [M, 10] out: gradient per list entry (zero-initialised)
):
    n_tiles = tile_offsets.shape[0] - 1
    spread = ti.static(task_spread(1))
    for ix in range(_slots(n_tiles, threads) * spread):  # one task per tile: no atomics for its entries' gradients
        tile = n_tiles  # the slot's tile, computed for the first index of each slot only (two divisions)
        if ix % spread == 0:
            tile = _interleaved(ix // spread, n_tiles, threads)
        if tile < n_tiles:
            w_img = width
            cam_base, x0, y0, x1, y1 = _tile_box(tile, tiles_x, tiles_y, width, height)
            start = tile_offsets[tile]
            last = start  # entries at or past every pixel's end contribute nothing
            # per pixel: T, the colour and depth of what lies behind the current entry (final colour
            # minus what is in front, updated as the walk goes forward: T is never divided back up),
            # then the upstream gradients, dL/dA * T_final and the end of the pixel's list (none
            # for a tile without entries)
            if tile_offsets[tile + 1] > start:
                for py, px in ti.ndrange((y0, y1), (x0, x1)):
                    pix = (cam_base + py) * w_img + px
                    s = STATE * pix
                    last = ti.max(last, ends[pix])
                    state[s] = 1.0
                    state[s + 1] = rgb[3 * pix] * 1.0
                    state[s + 2] = rgb[3 * pix + 1] * 1.0
                    state[s + 3] = rgb[3 * pix + 2] * 1.0
                    state[s + 4] = depth[pix] * 1.0
                    state[s + 5] = g_rgb[3 * pix] * 1.0
                    state[s + 6] = g_rgb[3 * pix + 1] * 1.0
                    state[s + 7] = g_rgb[3 * pix + 2] * 1.0
                    state[s + 8] = g_depth[pix] * 1.0
                    state[s + 9] = g_alpha[pix] * (1.0 - alpha[pix])
            for j in range(start, last):
                mx, my, ca, cb, cc, op, cr, cg, cbl, cz, det, reach = _entry(packed, entry_ids[j])
                g_mx, g_my, g_a, g_b, g_c, g_op = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
                g_r, g_g, g_bl, g_z = 0.0, 0.0, 0.0, 0.0
                if reach >= 0.0:
                    inv_ca, rows = _entry_rows(my, ca, det, reach, y0, y1)
                    for py in range(rows[0], rows[1]):
                        dy, cols = _row_span(py, mx, my, ca, cb, det, reach, inv_ca, x0, x1)
                        row = (cam_base + py) * w_img
                        for px in range(cols[0], cols[1]):
                            pix = row + px
                            if j < ends[pix]:
                                dx = (px + 0.5) - mx
                                q = ca * dx * dx + 2.0 * cb * dx * dy + cc * dy * dy
                                if q <= CUTOFF_MAHALANOBIS2:
                                    G = ti.exp(-0.5 * q)
                                    raw = op * G
                                    a = ti.min(ALPHA_MAX, raw)
                                    if a >= ALPHA_MIN:
                                        s = STATE * pix
                                        T = state[s]
                                        w = a * T
                                        rest_r = state[s + 1] - w * cr
                                        rest_g = state[s + 2] - w * cg
                                        rest_b = state[s + 3] - w * cbl
                                        rest_d = state[s + 4] - w * cz
                                        state[s + 1] = rest_r
                                        state[s + 2] = rest_g
                                        state[s + 3] = rest_b
                                        state[s + 4] = rest_d
                                        gr = state[s + 5]
                                        gg = state[s + 6]
                                        gb = state[s + 7]
                                        gd = state[s + 8]
                                        g_r += gr * w
                                        g_g += gg * w
                                        g_bl += gb * w
                                        g_z += gd * w
                                        if raw < ALPHA_MAX:
                                            inv = 1.0 / (1.0 - a)
                                            g_alpha_j = (gr * (cr * T - rest_r * inv)
                                                         + gg * (cg * T - rest_g * inv)
                                                         + gb * (cbl * T - rest_b * inv)
                                                         + gd * (cz * T - rest_d * inv)
                                                         + state[s + 9] * inv)
                                            g_op += g_alpha_j * G
                                            g_q = -0.5 * g_alpha_j * raw  # dL/dq = dL/da * op * dG/dq
                                            g_a += g_q * dx * dx
                                            g_b += g_q * 2.0 * dx * dy
                                            g_c += g_q * dy * dy
                                            # d = pixel - mean, so dq/dmean = -dq/dd
                                            g_mx -= g_q * 2.0 * (ca * dx + cb * dy)
                                            g_my -= g_q * 2.0 * (cb * dx + cc * dy)
                                        state[s] = T * (1.0 - a)
                g_params[j, 0] = g_mx
                g_params[j, 1] = g_my
                g_params[j, 2] = g_a
                g_params[j, 3] = g_b
                g_params[j, 4] = g_c
                g_params[j, 5] = g_op
                g_params[j, 6] = g_r
                g_params[j, 7] = g_g
                g_params[j, 8] = g_bl
                g_params[j, 9] = g_z


class _Composite(torch.autograd.Function):
    """Compositing of packed per-(camera, Gaussian) parameters over binned tiles."""

    @staticmethod
    def forward(ctx, packed, entry_ids, tile_offsets, n_cams, width, height):
        tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
        values = packed.detach().contiguous()
        dtype, device = packed.dtype, packed.device
        empty = torch.zeros if entry_ids.numel() == 0 else torch.empty  # the kernel writes every pixel
        rgb = empty(n_cams, height, width, 3, dtype=dtype, device=device)
        alpha = empty(n_cams, height, width, dtype=dtype, device=device)
        depth = empty(n_cams, height, width, dtype=dtype, device=device)
        ends = torch.zeros(n_cams, height, width, dtype=torch.int32, device=device)
        if entry_ids.numel() > 0:
            _composite_forward(values, entry_ids, tile_offsets, tiles_x, tiles_y, width, height, cpu_threads(),
                               rgb.view(-1),
                               alpha.view(-1), depth.view(-1), ends.view(-1))
        ctx.save_for_backward(values, entry_ids, tile_offsets, rgb, alpha, depth, ends)
        ctx.dims = (tiles_x, tiles_y, width, height)
        return rgb, alpha[..., None], depth[..., None]

    @staticmethod
    def backward(ctx, g_rgb, g_alpha, g_depth):
        values, entry_ids, tile_offsets, rgb, alpha, depth, ends = (t.detach() for t in ctx.saved_tensors)
        tiles_x, tiles_y, width, height = ctx.dims
        g_packed = torch.zeros_like(values)
        if entry_ids.numel() > 0:
            g_entries = torch.zeros(entry_ids.numel(), N_PARAMS, dtype=values.dtype, device=values.device)
            state = torch.empty(alpha.numel() * STATE, dtype=values.dtype, device=values.device)
            _composite_backward(
                values, entry_ids, tile_offsets, tiles_x, tiles_y, width, height, cpu_threads(), rgb.view(-1),
                alpha.view(-1),
                depth.view(-1), ends.view(-1), g_rgb.contiguous().view(-1), g_alpha.contiguous().view(-1),
                g_depth.contiguous().view(-1), state, g_entries,
            )
            g_packed.index_add_(0, entry_ids.long(), g_entries)  # int64 indices: 3-4x faster than int32
        return g_packed, None, None, None, None, None


@fast
@ti.kernel
def _count_tiles(x0: ti.types.ndarray(), x1: ti.types.ndarray(), y0: ti.types.ndarray(), y1: ti.types.ndarray(),
                 n: ti.i32, tiles_x: ti.i32, tiles_y: ti.i32, per_tile: ti.types.ndarray()):
    """per_tile[t] = number of entries whose tile box [x0, x1] x [y0, y1] (of camera entry // n) holds t."""
    for e in range(x0.shape[0]):
        base = (e // n) * tiles_y
        for ty in range(y0[e], y1[e] + 1):
            for tx in range(x0[e], x1[e] + 1):
                ti.atomic_add(per_tile[(base + ty) * tiles_x + tx], 1)


@fast
@ti.kernel
def _fill_tiles(order: ti.types.ndarray(), x0: ti.types.ndarray(), x1: ti.types.ndarray(), y0: ti.types.ndarray(),
                y1: ti.types.ndarray(), n: ti.i32, tiles_x: ti.i32, tiles_y: ti.i32, cursor: ti.types.ndarray(),
                entry_ids: ti.types.ndarray()):
    """Append every entry, taken in ``order`` (near to far), to the lists of the tiles of its box;
    ``cursor`` [n_tiles] starts at each list's offset. One serial pass: deterministic lists."""
    ti.loop_config(serialize=True)
    for i in range(order.shape[0]):
        e = order[i]
        base = (e // n) * tiles_y
        for ty in range(y0[e], y1[e] + 1):
            for tx in range(x0[e], x1[e] + 1):
                t = (base + ty) * tiles_x + tx
                entry_ids[cursor[t]] = e
                cursor[t] = cursor[t] + 1


def entry_reach(conics: torch.Tensor, opacities: torch.Tensor) -> torch.Tensor:
    """The kernels' _reach in PyTorch: [...] q below which an entry can count (negative: nowhere)."""
    a, b, c = conics.unbind(-1)
    det = a * c - b * b
    ok = (opacities >= ALPHA_MIN) & (det > 0) & (a > 0) & (c > 0)
    q = torch.clamp(2.0 * torch.log(opacities.clamp_min(ALPHA_MIN) / ALPHA_MIN), max=CUTOFF_MAHALANOBIS2)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    extent2 = q * (a + c) / safe_det + 1.0
    reach = q * (1.0 + REACH_REL) + REACH_REL + REACH_TERMS * (a + 2.0 * b.abs() + c) * extent2
    return torch.where(ok, reach, torch.full_like(reach, -1.0))


def depth_order(depths: torch.Tensor) -> torch.Tensor:
    """Indices [K] sorting positive ``depths`` [K] near to far, ties by index (a stable argsort).
    In float32 the depth's bits (monotone for positive floats) and the index make one unique int64
    key, whose plain sort is four times faster than a stable float sort."""
    if depths.dtype == torch.float32 and depths.numel() < 2**31:
        index = torch.arange(depths.numel(), device=depths.device)
        keys = (depths.contiguous().view(torch.int32).to(torch.int64) << 32) | index
        return torch.sort(keys).values & 0xFFFFFFFF
    return torch.argsort(depths, stable=True)


def bin_tiles(means2d, conics, opacities, depths, valid, width, height):
    """Tile lists for the flattened (camera, Gaussian) entries. ``means2d`` [C,N,2], ``conics``
    [C,N,3], ``opacities`` [N], ``depths`` [C,N], ``valid`` [C,N]. Each entry goes to every tile
    that the bounding box of its reach ellipse (q <= entry_reach, padded a hair) touches, in
    order of depth (ties by index). Returns ``entry_ids`` [M] int32 (rows of the flattened
    [C*N] entries, tile after tile, near to far) and ``tile_offsets`` [C*tiles + 1] int32."""
    n_cams, n = depths.shape
    tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
    device = depths.device
    with torch.no_grad():
        reach = entry_reach(conics, opacities[None].expand(n_cams, n)).reshape(-1)
        a, b, c = (t.reshape(-1) for t in conics.unbind(-1))
        mx, my = means2d[..., 0].reshape(-1), means2d[..., 1].reshape(-1)
        det = (a * c - b * b).clamp_min(1e-30)
        rx = (reach.clamp_min(0) * c / det).sqrt() * 1.001 + 1e-3  # half-widths of the ellipse's box
        ry = (reach.clamp_min(0) * a / det).sqrt() * 1.001 + 1e-3
        ok = valid.reshape(-1) & (reach >= 0) & torch.isfinite(rx) & torch.isfinite(ry) & torch.isfinite(mx) \
            & torch.isfinite(my)
        x0 = torch.floor((mx - rx) / TILE).clamp(-1, tiles_x).to(torch.int32).clamp_min(0)
        x1 = torch.floor((mx + rx) / TILE).clamp(-1, tiles_x).to(torch.int32).clamp_max(tiles_x - 1)
        y0 = torch.floor((my - ry) / TILE).clamp(-1, tiles_y).to(torch.int32).clamp_min(0)
        y1 = torch.floor((my + ry) / TILE).clamp(-1, tiles_y).to(torch.int32).clamp_max(tiles_y - 1)
        x1 = torch.where(ok, x1, x0 - 1)  # an empty box
        n_tiles = n_cams * tiles_x * tiles_y
        per_tile = torch.zeros(n_tiles, dtype=torch.int32, device=device)
        _count_tiles(x0, x1, y0, y1, n, tiles_x, tiles_y, per_tile)
        tile_offsets = torch.zeros(n_tiles + 1, dtype=torch.int32, device=device)
        tile_offsets[1:] = torch.cumsum(per_tile, 0)
        total = int(tile_offsets[-1])
        entry_ids = torch.empty(total, dtype=torch.int32, device=device)
        if total:
            order = depth_order(depths.reshape(-1))
            order = order[ok[order]].to(torch.int32)
            cursor = tile_offsets[:-1].clone()
            _fill_tiles(order, x0, x1, y0, y1, n, tiles_x, tiles_y, cursor, entry_ids)
    return entry_ids, tile_offsets


def rasterize_tiled(means, scales, opacities, colors, viewmats, Ks, width, height, background, quats, near_plane):
    """Tiled Taichi backend of :func:`render.rasterization` (inputs already checked)."""
    from taichi_sim.runtime import require_taichi

    require_taichi()
    n_cams, n = viewmats.shape[0], means.shape[0]
    means2d, cov2d, depths, valid = project_gaussians(means, scales, quats, viewmats, Ks, width, height, near_plane)
    conics = conic_of(cov2d)
    entry_ids, tile_offsets = bin_tiles(means2d, conics, opacities, depths, valid, width, height)
    packed = torch.cat(
        [means2d, conics, opacities[None, :, None].expand(n_cams, n, 1),
         colors[None].expand(n_cams, n, 3), depths[..., None]],
        dim=-1,
    ).reshape(n_cams * n, N_PARAMS)
    rgb_fg, alpha, depth_sum = _Composite.apply(packed, entry_ids, tile_offsets, n_cams, width, height)
    return finish_images(rgb_fg, alpha, depth_sum, background)
