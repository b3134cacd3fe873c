"""Objects for the MPM generator: built-in shapes as signed-distance functions, or a mesh, filled
with jittered particles, scaled to a size and placed in the scene.

Every built-in shape is a function from points [N,3] (in its own canonical frame, y up) to a
signed distance (negative inside; for some shapes only a bound of the true distance, which is
all the inside test needs), with a canonical bounding box. A mesh becomes watertight by merging
close vertices, and its inside test is open3d's RaycastingScene signed distance.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from taichi_sim.errors import SgausError

Inside = Callable[[np.ndarray], np.ndarray]  # canonical points [N,3] -> signed distance [N]


# ------------------------------------------------------------------ 2D / 3D primitives
def _box(p: np.ndarray, half) -> np.ndarray:
    q = np.abs(p) - np.asarray(half, dtype=np.float64)
    return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(axis=-1), 0.0)


def _sphere(p: np.ndarray, center=(0.0, 0.0, 0.0), radius: float = 1.0) -> np.ndarray:
    return np.linalg.norm(p - np.asarray(center), axis=-1) - radius


def _extrude(d2: np.ndarray, z: np.ndarray, half_depth: float) -> np.ndarray:
    """Extrude a 2D signed distance d2 (in the xy plane) to depth [-half_depth, half_depth] in z."""
    w = np.stack([d2, np.abs(z) - half_depth], axis=-1)
    return np.minimum(w.max(axis=-1), 0.0) + np.linalg.norm(np.maximum(w, 0.0), axis=-1)


def _rect2(p2: np.ndarray, center, half) -> np.ndarray:
    q = np.abs(p2 - np.asarray(center)) - np.asarray(half)
    return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(axis=-1), 0.0)


# ------------------------------------------------------------------ built-in shapes
def sd_sphere(p):
    return _sphere(p)


def sd_box(p):
    return _box(p, (1.0, 0.7, 0.8))


def sd_torus(p):
    """A ring of major radius 1 and tube radius 0.4 lying in the xz plane."""
    q = np.stack([np.linalg.norm(p[:, [0, 2]], axis=-1) - 1.0, p[:, 1]], axis=-1)
    return np.linalg.norm(q, axis=-1) - 0.4


def sd_cross(p):
    """A plus sign: two bars crossing in the xy plane, extruded along z."""
    a = _box(p, (1.0, 0.3, 0.3))
    b = _box(p, (0.3, 1.0, 0.3))
    return np.minimum(a, b)


def sd_banana(p):
    """A bent capsule: a tube along an arc of radius 1.5 over +-55 degrees, tapering to its ends."""
    center = np.array([0.0, 1.5])
    d = p[:, :2] - center
    ang = np.arctan2(d[:, 0], -d[:, 1])  # 0 at the bottom of the arc
    span = np.radians(55.0)
    a = np.clip(ang, -span, span)
    nearest = center + 1.5 * np.stack([np.sin(a), -np.cos(a)], axis=-1)
    dist = np.sqrt(np.sum((p[:, :2] - nearest) ** 2, axis=-1) + p[:, 2] ** 2)
    radius = 0.35 * (1.0 - 0.55 * (a / span) ** 2)
    return dist - radius


def sd_pawn(p):
    """A chess pawn: a lathe profile (base, tapering stem, collar) and a spherical head, y up."""
    r = np.linalg.norm(p[:, [0, 2]], axis=-1)
    y = p[:, 1]
    base = _extrude(np.abs(r) - 0.75, y + 1.1 - 0.125, 0.125)  # disc: y in [-1.1, -0.85]
    plinth = _extrude(r - 0.55, y + 0.85 - 0.1, 0.1)  # y in [-0.85, -0.65]
    t = np.clip((y + 0.65) / 1.0, 0.0, 1.0)  # stem from y = -0.65 (radius 0.4) to 0.35 (radius 0.18)
    stem_r = 0.4 + (0.18 - 0.4) * t
    stem = np.maximum(r - stem_r, np.abs(y + 0.15) - 0.5)
    collar = _extrude(r - 0.38, y - 0.35, 0.06)
    head = _sphere(p, (0.0, 0.72, 0.0), 0.38)
    return np.minimum.reduce([base, plinth, stem, collar, head])


def sd_letter_s(p):
    """The letter S: two open rings (tube width 0.3) stacked in the xy plane, extruded in z."""
    def ring(p2, cy, gap_x_sign, gap_y_sign):
        q = p2 - np.array([0.0, cy])
        d = np.abs(np.linalg.norm(q, axis=-1) - 0.5) - 0.15
        gap = (np.sign(q[:, 0]) == gap_x_sign) & (np.sign(q[:, 1]) == gap_y_sign)  # the open quadrant
        return np.where(gap, np.maximum(d, np.minimum(np.abs(q[:, 0]), np.abs(q[:, 1]))), d)

    p2 = p[:, :2]
    d2 = np.minimum(ring(p2, 0.5, 1.0, -1.0), ring(p2, -0.5, -1.0, 1.0))
    return _extrude(d2, p[:, 2], 0.25)


def sd_letter_l(p):
    d2 = np.minimum(_rect2(p[:, :2], (-0.35, 0.0), (0.2, 1.0)), _rect2(p[:, :2], (0.1, -0.8), (0.65, 0.2)))
    return _extrude(d2, p[:, 2], 0.25)


def sd_letter_t(p):
    d2 = np.minimum(_rect2(p[:, :2], (0.0, 0.8), (0.8, 0.2)), _rect2(p[:, :2], (0.0, -0.1), (0.2, 0.9)))
    return _extrude(d2, p[:, 2], 0.25)


# name -> (signed distance, canonical bounding box lo, hi)
SHAPES: dict[str, tuple[Inside, tuple, tuple]] = {
    "sphere": (sd_sphere, (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),
    "box": (sd_box, (-1.0, -0.7, -0.8), (1.0, 0.7, 0.8)),
    "torus": (sd_torus, (-1.4, -0.4, -1.4), (1.4, 0.4, 1.4)),
    "cross": (sd_cross, (-1.0, -1.0, -0.3), (1.0, 1.0, 0.3)),
    "banana": (sd_banana, (-1.45, -0.4, -0.4), (1.45, 0.85, 0.4)),
    "pawn": (sd_pawn, (-0.75, -1.1, -0.75), (0.75, 1.1, 0.75)),
    "letter_s": (sd_letter_s, (-0.65, -1.15, -0.25), (0.65, 1.15, 0.25)),
    "letter_l": (sd_letter_l, (-0.55, -1.0, -0.25), (0.75, 1.0, 0.25)),
    "letter_t": (sd_letter_t, (-0.8, -1.0, -0.25), (0.8, 1.0, 0.25)),
}


def shape_names() -> list[str]:
    return sorted(SHAPES)


def load_mesh_sdf(path: str | Path) -> tuple[Inside, tuple, tuple]:
    """Signed distance of a mesh open3d reads (made watertight by merging close vertices)."""
    import open3d as o3d

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        raise SgausError(f"{path}: open3d read no triangles from this file (not a mesh, or an unsupported format)")
    verts = np.asarray(mesh.vertices)
    extent = float(np.max(verts.max(0) - verts.min(0)))
    if not extent > 0:
        raise SgausError(f"{path}: the mesh is degenerate (zero extent)")
    mesh.triangle_uvs = o3d.utility.Vector2dVector()  # texture seams only split vertices here
    mesh = mesh.merge_close_vertices(1e-6 * extent)
    mesh.remove_duplicated_triangles()
    mesh.remove_degenerate_triangles()
    mesh.remove_unreferenced_vertices()
    if not mesh.is_watertight():
        raise SgausError(f"{path}: the mesh is not watertight even after merging close vertices, so it has no inside")
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    verts = np.asarray(mesh.vertices)

    def sdf(p: np.ndarray) -> np.ndarray:
        q = o3d.core.Tensor(np.ascontiguousarray(p, dtype=np.float32))
        return scene.compute_signed_distance(q).numpy().astype(np.float64)

    return sdf, tuple(verts.min(0)), tuple(verts.max(0))


# ------------------------------------------------------------------ filling
@dataclass
class ParticleObject:
    """Particles filling an object at rest.

    x: positions [P,3] (metres); surface: [P] bool, within about one spacing of the surface;
    part: [P] int part id (0 everywhere unless split); spacing: the particle spacing; size: the
    object's largest extent; center: the centre of its bounding box; scale, rotation, offset:
    world = scale * rotation @ canonical + offset (the shape's own frame to the scene);
    normal: [P,3] outward unit normals of the surface particles at rest (zero inside; None when
    unknown).
    """

    x: np.ndarray
    surface: np.ndarray
    part: np.ndarray
    spacing: float
    size: float
    center: np.ndarray
    scale: float = 1.0
    rotation: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    offset: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    normal: np.ndarray | None = None

    @property
    def n_particles(self) -> int:
        return len(self.x)

    def to_canonical(self, world: np.ndarray) -> np.ndarray:
        """World points [N,3] -> the shape's canonical frame (where its signed distance lives)."""
        return ((np.asarray(world, dtype=np.float64) - self.offset) / self.scale) @ self.rotation


def rotation_matrix(degrees) -> np.ndarray:
    """Rotation by Euler angles (x, then y, then z) in degrees."""
    ax, ay, az = np.radians(np.asarray(degrees, dtype=np.float64).reshape(3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def fill_object(shape: str | None = None, mesh: str | Path | None = None, *, size: float = 0.3,
                spacing: float = 0.0078125, bottom=(0.0, 0.4, 0.0), rotation_deg=(0.0, 0.0, 0.0),
                seed: int = 0, jitter: float = 0.3) -> ParticleObject:
    """Fill a built-in ``shape`` or a ``mesh`` file with particles about ``spacing`` apart.

    The object is rotated by ``rotation_deg``, scaled so that its largest extent is ``size``, and
    moved so that its bounding box is centred on ``bottom`` in x and z and its lowest particle
    sits at height ``bottom[1]``.
    Points of a regular lattice are jittered by up to ``jitter`` spacings (seeded) and kept when
    inside; a particle is on the surface when a lattice neighbour one spacing away is outside.
    """
    if (shape is None) == (mesh is None):
        raise SgausError("give either a built-in shape or a mesh file, not both and not neither")
    if not size > 0:
        raise SgausError(f"the object size must be positive, got {size}")
    if not spacing > 0:
        raise SgausError(f"the particle spacing must be positive, got {spacing}")
    if mesh is not None:
        sdf, lo, hi = load_mesh_sdf(mesh)
    else:
        if shape not in SHAPES:
            raise SgausError(f"unknown shape {shape!r}: choose one of {', '.join(shape_names())}")
        sdf, lo, hi = SHAPES[shape]
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    R = rotation_matrix(rotation_deg)
    # the rotated shape's tight extent, from its inside points on a fine probe lattice
    probe = np.stack(np.meshgrid(*[np.linspace(lo[d], hi[d], 96) for d in range(3)], indexing="ij"), -1).reshape(-1, 3)
    probe = probe[sdf(probe) < 0.0] @ R.T
    if len(probe) == 0:
        raise SgausError("the object has no inside (is the mesh closed and consistently oriented?)")
    cell = float(np.max(hi - lo)) / 95
    p_lo, p_hi = probe.min(0) - 0.5 * cell, probe.max(0) + 0.5 * cell
    scale = size / float(np.max(p_hi - p_lo))
    w_lo, w_hi = p_lo * scale, p_hi * scale
    counts = np.ceil((w_hi - w_lo) / spacing).astype(int) + 1
    if np.prod(counts) > 5e7:
        raise SgausError(f"too many lattice points ({int(np.prod(counts))}): use a coarser grid or a smaller object")
    mid = (w_lo + w_hi) / 2
    axes = [mid[d] + spacing * (np.arange(counts[d]) - (counts[d] - 1) / 2) for d in range(3)]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)

    def inside(world_pts: np.ndarray) -> np.ndarray:
        return sdf((world_pts / scale) @ R) < 0.0

    keep = inside(lattice)
    pts = lattice[keep]
    if len(pts) < 8:
        raise SgausError(f"the object holds only {len(pts)} particles at this spacing: make it larger or the grid finer")
    surface = np.zeros(len(pts), dtype=bool)
    for d in range(3):
        for sgn in (-1.0, 1.0):
            surface |= ~inside(pts + sgn * spacing * np.eye(3)[d])
    rng = np.random.default_rng(seed)
    pts = pts + rng.uniform(-jitter, jitter, size=pts.shape) * spacing
    bb_lo, bb_hi = pts.min(0), pts.max(0)
    offset = np.asarray(bottom, dtype=np.float64) - np.array([(bb_lo[0] + bb_hi[0]) / 2, bb_lo[1], (bb_lo[2] + bb_hi[2]) / 2])
    pts = pts + offset
    obj = ParticleObject(x=pts, surface=surface, part=np.zeros(len(pts), dtype=np.int64), spacing=float(spacing),
                         size=float(np.max(pts.max(0) - pts.min(0))), center=(pts.min(0) + pts.max(0)) / 2,
                         scale=float(scale), rotation=R, offset=offset)
    # surface normals from the signed distance at the jittered positions (away from the centre
    # where its gradient vanishes)
    obj.normal = np.zeros_like(pts)
    obj.normal[surface] = sdf_normals(sdf, obj.to_canonical(pts[surface]), R, 0.25 * spacing / scale,
                                      pts[surface] - obj.center)
    return obj


def sdf_normals(sdf: Inside, canonical: np.ndarray, rotation: np.ndarray, step: float,
                fallback: np.ndarray) -> np.ndarray:
    """Outward unit normals [N,3] in the world frame at ``canonical`` points [N,3]: the signed
    distance's gradient by central differences of ``step`` (canonical units), rotated into the
    world (world = scale * rotation @ canonical + offset). Where the gradient vanishes or is not
    finite, the matching row of ``fallback`` [N,3] (normalised) stands in."""
    canonical = np.asarray(canonical, dtype=np.float64)
    grad = np.zeros_like(canonical)
    for d in range(3):
        e = np.zeros(3)
        e[d] = step
        grad[:, d] = sdf(canonical + e) - sdf(canonical - e)
    n = grad @ np.asarray(rotation, dtype=np.float64).T
    norm = np.linalg.norm(n, axis=1)
    bad = ~np.isfinite(norm) | (norm < 1e-12 * step)
    if np.any(bad):
        n[bad] = np.asarray(fallback, dtype=np.float64)[bad]
        norm[bad] = np.linalg.norm(n[bad], axis=1)
    return n / np.maximum(norm, 1e-300)[:, None]


def split_halves(obj: ParticleObject, axis: int = 0) -> np.ndarray:
    """Part ids for a two-part object: 0 below the median along ``axis``, 1 above."""
    cut = np.median(obj.x[:, axis])
    return (obj.x[:, axis] > cut).astype(np.int64)
