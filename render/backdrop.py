"""A ground plane and a background behind rendered Gaussians (pure PyTorch, no Taichi).

:func:`composite_backdrop` takes what :func:`render.rasterization` (or
``Gaussians.render_full``) returns when it is called without a background (``background=None``): the foreground colour, which is *premultiplied*
(``sum_i T_i alpha_i c_i``), the accumulated alpha and the expected depth, which is the
camera-space z (OpenCV: +z forward), not the distance along the ray. Per pixel it

* casts the ray through the pixel centre ``(u + 0.5, v + 0.5)`` of the camera (``viewmats``
  world-to-camera, OpenCV) and intersects it with the ground plane (a point and a normal that
  points to the side the cameras and the object are on). Where it hits in front of a camera that
  stands above the plane, the ground is drawn: a checker of squares ``square`` scene units wide,
  laid in the plane (so it is correct in perspective), box-filtered over each pixel's footprint
  on the plane (analytic derivatives of the hit point), so far squares blend to their mean
  instead of aliasing, and fading into the horizon colour (the background's mean) with distance;
  optionally darkened by a soft contact shadow of given points (e.g. the Gaussian centres);
* elsewhere (above the horizon, no ground, a camera under the plane) draws the background:
  black, white, or a checker in image space (the usual transparency grid), or an RGB triple;
* composites: where the splats are in front of the ground, ``out = rgb + (1 - alpha) B`` with B
  the backdrop (ground or background) — premultiplied "over"; where the plane is nearer than the
  splats' depth, the ground is opaque and hides them: ``out = B``. A narrow band (a twentieth of
  a square) blends the two, so a body resting on the ground has no jagged contact line.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from taichi_sim.errors import SgausError

BACKGROUNDS = ("black", "white", "checker")
GROUND_COLORS = ((0.56, 0.56, 0.56), (0.40, 0.40, 0.40))  # light and dark squares of the ground
CHECKER_COLORS = ((0.86, 0.86, 0.86), (0.70, 0.70, 0.70))  # image-space checker background
CHECKER_PIXELS = 16  # side of the image-space background squares, pixels
FADE_SQUARES = 60.0  # default fade distance, in squares
OCCLUSION_BAND = 0.05  # depth band (in squares) over which ground and splats blend


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def nice_square(extent: float) -> float:
    """A round checker size (1, 2 or 5 times a power of ten) near a quarter of ``extent``."""
    extent = float(extent)
    if not math.isfinite(extent) or extent <= 0:
        raise SgausError(f"the scene extent must be a positive number, got {extent}")
    target = extent / 4
    power = 10.0 ** math.floor(math.log10(target))
    return min((m * power for m in (1.0, 2.0, 5.0, 10.0)), key=lambda s: abs(math.log(s / target)))


def background_image(background, C: int, H: int, W: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The background [C,H,W,3]: "black", "white", "checker" (image-space squares of
    CHECKER_PIXELS pixels) or an RGB triple in [0, 1]."""
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise SgausError(f"unknown background {background!r} (choose one of {', '.join(BACKGROUNDS)})")
        if background == "checker":
            v = torch.arange(H, device=device)[:, None] // CHECKER_PIXELS
            u = torch.arange(W, device=device)[None, :] // CHECKER_PIXELS
            odd = ((u + v) % 2).bool()[..., None]
            c0, c1 = (torch.tensor(c, dtype=dtype, device=device) for c in CHECKER_COLORS)
            return torch.where(odd, c1, c0).expand(C, H, W, 3)
        colour = torch.full((3,), 0.0 if background == "black" else 1.0, dtype=dtype, device=device)
    else:
        colour = torch.as_tensor(background, dtype=dtype, device=device)
        if colour.shape != (3,) or not bool(((colour >= 0) & (colour <= 1)).all()):
            raise SgausError(f"a background colour must be 3 numbers in [0, 1], got {background!r}")
    return colour.expand(C, H, W, 3)


def plane_frame(normal, dtype=torch.float64, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit normal n and two unit axes e1, e2 of the plane with e2 = n x e1: e1 is the world x
    axis made perpendicular to n (the world z axis when n is close to x)."""
    n = torch.as_tensor(normal, dtype=dtype, device=device).reshape(-1)
    if n.shape != (3,) or not bool(torch.isfinite(n).all()) or float(n.norm()) < 1e-12:
        raise SgausError(f"the ground normal must be 3 finite numbers, not all zero, got {normal!r}")
    n = n / n.norm()
    a = torch.tensor([1.0, 0.0, 0.0] if abs(float(n[0])) < 0.9 else [0.0, 0.0, 1.0], dtype=dtype, device=device)
    e1 = a - n * (a @ n)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(n, e1)
    return n, e1, e2


def _filtered_square_wave(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The square wave +1 on [0,1), -1 on [1,2) (period 2) averaged over [p - w/2, p + w/2]:
    the difference of its antiderivative (a triangle wave) at both ends, divided by w. Tends to
    the wave itself as w -> 0 and to its mean, 0, as w grows."""
    def integral(x):
        f = x * 0.5 - torch.floor(x * 0.5)  # position in the period, [0, 1)
        return 2.0 * torch.where(f < 0.5, f, 1.0 - f)

    return (integral(p + 0.5 * w) - integral(p - 0.5 * w)) / w


def contact_shadow(points: torch.Tensor, ground_point, normal, softness: float | None = None,
                   resolution: int = 256):
    """A soft shadow map of ``points`` [M,3] dropped straight onto the plane.

    Each point darkens the plane below it with weight exp(-height / (extent / 2)) (a resting body
    casts a dark contact shadow, a body high above a faint one); the per-cell maximum (cells about
    the points' spacing) is dilated by one cell and blurred with a Gaussian of ``softness`` scene units (default a tenth of the
    points' extent in the plane). Returns a callable mapping plane coordinates (a, b) [...] in
    scene units (along :func:`plane_frame`'s e1, e2 from ``ground_point``) to a coverage in [0, 1].
    """
    pts = torch.as_tensor(points)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise SgausError(f"shadow points must be [M,3] with M >= 1, got {_shape(pts)}")
    dtype, device = torch.float64, pts.device
    pts = pts.detach().to(dtype)
    pts = pts[torch.isfinite(pts).all(1)]
    if len(pts) == 0:
        raise SgausError("shadow points must contain finite points")
    n, e1, e2 = plane_frame(normal, dtype, device)
    rel = pts - torch.as_tensor(ground_point, dtype=dtype, device=device)
    pa, pb, height = rel @ e1, rel @ e2, rel @ n
    extent = max(float(pa.max() - pa.min()), float(pb.max() - pb.min()), float(height.max() - height.min()), 1e-6)
    sigma = 0.1 * extent if softness is None else float(softness)
    if not sigma > 0:
        raise SgausError(f"the shadow softness must be positive, got {softness}")
    weight = torch.exp(-height.clamp_min(0) / (0.5 * extent))
    lo_a, lo_b = float(pa.min()) - 4 * sigma, float(pb.min()) - 4 * sigma
    span = max(float(pa.max()) - lo_a, float(pb.max()) - lo_b) + 4 * sigma
    # cells about as wide as the points' spacing in the plane (no holes between them), between a
    # quarter and a half of the blur (finer detail would be blurred away), at most `resolution`
    # of them along a side
    spacing = math.sqrt(float((pa.max() - pa.min()) * (pb.max() - pb.min())) / len(pts))
    cell = max(min(sigma / 2, spacing), sigma / 4, span / resolution)
    na = int(math.ceil((float(pa.max()) + 4 * sigma - lo_a) / cell)) + 1
    nb = int(math.ceil((float(pb.max()) + 4 * sigma - lo_b) / cell)) + 1
    ia = ((pa - lo_a) / cell).floor().long().clamp(0, na - 1)
    ib = ((pb - lo_b) / cell).floor().long().clamp(0, nb - 1)
    grid = torch.zeros(nb * na, dtype=dtype, device=device)
    grid = grid.scatter_reduce(0, ib * na + ia, weight, reduce="amax", include_self=True).reshape(1, 1, nb, na)
    grid = F.max_pool2d(grid, 3, stride=1, padding=1)
    s = sigma / cell
    r = int(math.ceil(3 * s))
    x = torch.arange(-r, r + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / s) ** 2)
    k = k / k.sum()
    grid = F.conv2d(grid, k.reshape(1, 1, 1, -1), padding=(0, r))
    grid = F.conv2d(grid, k.reshape(1, 1, -1, 1), padding=(r, 0)).clamp(0, 1)

    def coverage(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        gx = 2 * (a.to(dtype) - lo_a) / (na * cell) - 1
        gy = 2 * (b.to(dtype) - lo_b) / (nb * cell) - 1
        xy = torch.stack([gx, gy], -1).reshape(1, -1, 1, 2)
        xy = torch.nan_to_num(xy, nan=4.0, posinf=4.0, neginf=-4.0)  # off the map: no shadow
        out = F.grid_sample(grid, xy, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.reshape(a.shape)

    return coverage


def composite_backdrop(
    rgb: torch.Tensor,  # [C,H,W,3] premultiplied foreground colour (rasterization with background=None)
    alpha: torch.Tensor,  # [C,H,W,1] accumulated opacity
    depth: torch.Tensor | None,  # [C,H,W,1] expected camera-space z (0 where alpha = 0); None: splats in front
    viewmats: torch.Tensor,  # [C,4,4] world-to-camera, OpenCV
    Ks: torch.Tensor,  # [C,3,3] intrinsics, pixel centres at (u + 0.5, v + 0.5)
    ground_point=None,  # [3] a point of the ground plane; None: no ground
    ground_normal=(0.0, 1.0, 0.0),  # [3] the plane's upper side (where cameras and object are)
    background="black",  # "black" | "white" | "checker" | [3] RGB in [0, 1]
    square: float = 0.1,  # side of a ground square, scene units
    fade_distance: float | None = None,  # scene units from the camera; None: FADE_SQUARES squares
    shadow_points: torch.Tensor | None = None,  # [M,3] points casting a soft contact shadow, or None
    shadow_strength: float = 0.5,  # darkening of the ground under a fully covering shadow, in [0, 1]
    ground_colors=GROUND_COLORS,  # two RGB triples: the light and the dark squares
) -> torch.Tensor:  # [C,H,W,3]
    """The rendered splats over a ground plane and a background; see the module docstring."""
    for name, t in (("rgb", rgb), ("alpha", alpha), ("viewmats", viewmats), ("Ks", Ks)):
        if not isinstance(t, torch.Tensor):
            raise SgausError(f"composite_backdrop: {name} must be a torch tensor, got {type(t).__name__}")
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise SgausError(f"composite_backdrop: rgb must be [C,H,W,3], got {_shape(rgb)}")
    C, H, W = rgb.shape[:3]
    if alpha.shape != (C, H, W, 1):
        raise SgausError(f"composite_backdrop: alpha must be [C,H,W,1] = [{C},{H},{W},1], got {_shape(alpha)}")
    if depth is not None and (not isinstance(depth, torch.Tensor) or depth.shape != (C, H, W, 1)):
        raise SgausError(f"composite_backdrop: depth must be [C,H,W,1] = [{C},{H},{W},1] or None")
    if viewmats.shape != (C, 4, 4):
        raise SgausError(f"composite_backdrop: viewmats must be [C,4,4] with C={C}, got {_shape(viewmats)}")
    if Ks.shape != (C, 3, 3):
        raise SgausError(f"composite_backdrop: Ks must be [C,3,3] with C={C}, got {_shape(Ks)}")
    dtype, device = rgb.dtype, rgb.device
    bg = background_image(background, C, H, W, dtype, device)
    if ground_point is None:
        return rgb + (1 - alpha) * bg
    if not (math.isfinite(float(square)) and float(square) > 0):
        raise SgausError(f"composite_backdrop: square must be a positive length, got {square}")
    fade = FADE_SQUARES * float(square) if fade_distance is None else float(fade_distance)
    if not fade > 0:
        raise SgausError(f"composite_backdrop: fade_distance must be positive, got {fade_distance}")
    if not 0.0 <= float(shadow_strength) <= 1.0:
        raise SgausError(f"composite_backdrop: shadow_strength must lie in [0, 1], got {shadow_strength}")
    colours = torch.as_tensor(ground_colors, dtype=torch.float64)
    if colours.shape != (2, 3):
        raise SgausError("composite_backdrop: ground_colors must be two RGB triples")
    p = torch.as_tensor(ground_point, dtype=torch.float64, device=device).reshape(-1)
    if p.shape != (3,) or not bool(torch.isfinite(p).all()):
        raise SgausError(f"composite_backdrop: ground_point must be 3 finite numbers, got {ground_point!r}")

    # rays in float64: the hit point of a grazing ray is a large number over a small one
    f64 = torch.float64
    n, e1, e2 = plane_frame(ground_normal, f64, device)
    Kinv = torch.linalg.inv(Ks.to(f64))
    R, t = viewmats[:, :3, :3].to(f64), viewmats[:, :3, 3].to(f64)
    centre = -torch.einsum("cji,cj->ci", R, t)  # camera centres in the world [C,3]
    u = torch.arange(W, dtype=f64, device=device) + 0.5
    v = torch.arange(H, dtype=f64, device=device) + 0.5
    pix = torch.stack(torch.broadcast_tensors(u[None, :], v[:, None], torch.ones(1, 1, dtype=f64, device=device)), -1)
    Rt_Kinv = R.transpose(1, 2) @ Kinv  # pixel (u, v, 1) -> world direction with camera z = 1
    D = torch.einsum("cij,hwj->chwi", Rt_Kinv, pix)  # [C,H,W,3]
    dDu, dDv = Rt_Kinv[:, :, 0], Rt_Kinv[:, :, 1]  # derivatives of D along u and v [C,3]
    height = (centre - p) @ n  # camera heights above the plane [C]
    nD = D @ n  # [C,H,W]
    hit = (height[:, None, None] > 0) & (nD < -1e-12)
    nD_safe = torch.where(hit, nD, -torch.ones_like(nD))
    tz = torch.where(hit, -height[:, None, None] / nD_safe, torch.zeros_like(nD))  # camera z of the hit
    X = centre[:, None, None] + tz[..., None] * D
    rel = X - p
    a, b = rel @ e1 / square, rel @ e2 / square  # plane coordinates, in squares

    # footprint of a pixel on the plane: dX/du = tz (dD/du - D (n . dD/du) / (n . D)), same for v
    def dX(dd):
        return tz[..., None] * (dd[:, None, None] - D * ((dd @ n)[:, None, None] / nD_safe)[..., None])

    Xu, Xv = dX(dDu), dX(dDv)
    wa = ((Xu @ e1).abs() + (Xv @ e1).abs()) / square
    wb = ((Xu @ e2).abs() + (Xv @ e2).abs()) / square
    wa, wb = wa.clamp(1e-4, 1e4), wb.clamp(1e-4, 1e4)
    s = 0.5 - 0.5 * _filtered_square_wave(a, wa) * _filtered_square_wave(b, wb)  # 0 light ... 1 dark
    ground = (1 - s)[..., None] * colours[0].to(device) + s[..., None] * colours[1].to(device)
    if shadow_points is not None:
        cov = contact_shadow(shadow_points, p, n, softness=None)(a * square, b * square)
        ground = ground * (1 - float(shadow_strength) * cov)[..., None]
    dist = tz * D.norm(dim=-1)  # distance along the ray
    keep = torch.exp(-(dist / fade) ** 2)[..., None]
    horizon = bg.to(f64).mean(dim=(1, 2), keepdim=True)  # the background's mean colour [C,1,1,3]
    ground = keep * ground + (1 - keep) * horizon
    backdrop = torch.where(hit[..., None], ground.to(dtype), bg)
    out = rgb + (1 - alpha) * backdrop
    if depth is not None:
        band = OCCLUSION_BAND * float(square)
        ahead = ((depth[..., 0].to(f64) - tz) / band + 0.5).clamp(0, 1)  # 1: the plane is nearer
        occluded = torch.where(hit & (alpha[..., 0] > 0), ahead, torch.zeros_like(ahead)).to(dtype)[..., None]
        out = occluded * backdrop + (1 - occluded) * out
    return out
