"""MLS-MPM elastic simulator (3D, APIC, quadratic B-splines) in Taichi, forward only.

It makes the synthetic ground truth of ``sgaus generate-mpm`` (as PAC-NeRF and DiffTaichi run MLS-MPM): a dense
grid over a cubic scene box, per-particle elastic materials (fixed corotated or compressible
Neo-Hookean from Young's modulus, Poisson ratio and density), gravity, an initial velocity, a
ground plane with sticky, slip or Coulomb-friction contact, and separating walls at the box's
faces.

Time stepping: the substep comes from a CFL condition on the material's P-wave speed; after
every frame the particle speeds are checked against the grid spacing (``max|v| dt < dx``) and
for NaN. A violation restores the state saved at the frame's start, halves the substep and
retries the frame; after ``max_halvings`` halvings a ValueError says what went wrong.

:func:`numpy_substep` is the plain-NumPy twin of one substep (P2G, grid update, G2P) used by the
tests on tiny grids. Fields are allocated when :class:`MPMSimulator` is constructed, never at
import; Taichi must be initialised first (taichi_sim.runtime.init_taichi).
"""

import math
from dataclasses import dataclass

import numpy as np
import taichi as ti

from taichi_sim.errors import SgausError
from taichi_sim.runtime import current_arch, require_taichi

MODELS = ("neohookean", "corotated")
GROUND_MODES = ("sticky", "slip", "friction")
WALL_CELLS = 3  # grid nodes this close to a face of the box cannot move outwards
# a particle's quadratic stencil reaches the nodes within 1.5 cells, and the nodes lie at box_lo + i dx
# (i < n_grid): it reaches a node the walls hold once it lies within this many cells of a low / high face
WALL_REACH = (WALL_CELLS + 0.5, WALL_CELLS + 1.5)
# Ground contact. The quadratic B-spline stencil reaches 1.5 cells, so particles stop short of the
# grid nodes the ground holds. Measured (sticky, slip and friction; grids 24, 32 and 64; several
# alignments of the plane with the grid), the lowest particles come to rest 0.77 to 0.95 cells
# above the highest held node row under a flat load (boxes, tori) and about 0.6 under a point
# contact (a sphere's lowest particle); CONTACT_GAP sits between. The ground holds the nodes more
# than CONTACT_GAP - 0.5 cells below the plane: the highest held row is then between
# CONTACT_GAP - 0.5 and CONTACT_GAP + 0.5 cells below it, so particles rest within about half a
# cell of the plane on any grid, and within a fifth of a cell on a grid with a node row exactly
# CONTACT_GAP cells below the plane (ground_aligned_lo, as generate-mpm uses).
CONTACT_GAP = 0.78


def wall_contact(positions: np.ndarray, box_lo, box_size: float, n_grid: int, margin: float = 1.0):
    """The first frame in which a particle comes near the walls, as (frame, axis, side), or None.

    positions [T,P,3]. A particle feels a wall once it lies within WALL_REACH cells of a face;
    ``margin`` cells more cover motion between two frames. The low face of axis 1 lies under the
    ground and is not checked. side: -1 low face, +1 high face."""
    dx = float(box_size) / int(n_grid)
    cells = (np.asarray(positions, dtype=np.float64) - np.asarray(box_lo, dtype=np.float64).reshape(3)) / dx
    low = cells < WALL_REACH[0] + margin  # [T,P,3]
    high = cells >= int(n_grid) - WALL_REACH[1] - margin
    low[..., 1] = False
    frames = np.flatnonzero(low.any(axis=(1, 2)) | high.any(axis=(1, 2)))
    if not len(frames):
        return None
    f = int(frames[0])
    axis, side = next((axis, side) for axis in range(3) for side, hit in ((-1, low), (1, high))
                      if hit[f, :, axis].any())
    return f, axis, side


@dataclass(frozen=True)
class Ground:
    """A ground plane: ``point`` on it, unit ``normal`` pointing into the free space.

    The ground acts on the grid nodes more than ``CONTACT_GAP - 0.5`` cells below the plane, so
    that resting particles sit on the plane itself (see CONTACT_GAP).
    mode: "sticky" zeroes those nodes' velocity; "slip" removes the inward normal component;
    "friction" removes it and reduces the tangential speed by ``friction`` times the removed
    normal speed (Coulomb), stopping it at zero.
    """

    point: tuple = (0.0, 0.0, 0.0)
    normal: tuple = (0.0, 1.0, 0.0)
    mode: str = "friction"
    friction: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in GROUND_MODES:
            raise SgausError(f"unknown ground mode {self.mode!r}: choose one of {', '.join(GROUND_MODES)}")
        if not self.friction >= 0:
            raise SgausError(f"the friction coefficient must be >= 0, got {self.friction}")
        n = np.asarray(self.normal, dtype=np.float64)
        if n.shape != (3,) or not np.linalg.norm(n) > 0:
            raise SgausError(f"the ground normal must be a non-zero 3-vector, got {self.normal}")
        object.__setattr__(self, "normal", tuple(float(c) for c in n / np.linalg.norm(n)))
        object.__setattr__(self, "point", tuple(float(c) for c in self.point))


def ground_aligned_lo(ground_height: float, dx: float, depth: float) -> float:
    """The height of the lowest grid nodes for a ground plane y = ``ground_height`` (normal +y):
    about ``depth`` below it, such that a node row lies exactly CONTACT_GAP cells below the plane
    (the highest row the ground holds) and no wall node lies above that row."""
    if not dx > 0:
        raise SgausError(f"the grid spacing must be positive, got {dx}")
    rows = max(WALL_CELLS - 1, round(depth / dx - CONTACT_GAP))  # whole cells from the lowest to that row
    return float(ground_height) - (rows + CONTACT_GAP) * dx


def lame_parameters(youngs_modulus, poisson_ratio):
    """Lame (mu, lambda) from Young's modulus E and Poisson ratio nu (arrays or scalars)."""
    E = np.asarray(youngs_modulus, dtype=np.float64)
    nu = np.asarray(poisson_ratio, dtype=np.float64)
    mu = E / (2.0 * (1.0 + nu))
    lam = E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))
    return mu, lam


def wave_speed(youngs_modulus, poisson_ratio, density) -> float:
    """The largest P-wave speed sqrt((lambda + 2 mu) / rho) over the particles, m/s."""
    mu, lam = lame_parameters(youngs_modulus, poisson_ratio)
    rho = np.asarray(density, dtype=np.float64)
    return float(np.max(np.sqrt((lam + 2.0 * mu) / rho)))


def check_material(youngs_modulus, poisson_ratio, density) -> None:
    """Raise ValueError for a non-positive modulus or density, or a Poisson ratio outside (-1, 0.5)."""
    E, nu, rho = (np.asarray(a, dtype=np.float64) for a in (youngs_modulus, poisson_ratio, density))
    if not np.all(np.isfinite(E)) or np.any(E <= 0):
        raise SgausError(f"Young's modulus must be positive, got {float(np.min(E)):g}")
    if not np.all(np.isfinite(nu)) or np.any(nu <= -1.0) or np.any(nu >= 0.5):
        raise SgausError(f"the Poisson ratio must lie in (-1, 0.5), got {float(nu.flat[0]):g}")
    if not np.all(np.isfinite(rho)) or np.any(rho <= 0):
        raise SgausError(f"the density must be positive, got {float(np.min(rho)):g}")


def _per_particle(value, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise SgausError(f"{name} must be a scalar or one value per particle ({n}), got shape {arr.shape}")
    return arr.copy()


def _torch_dtype():
    import torch

    from taichi_sim.runtime import default_float

    return torch.float64 if default_float() == "f64" else torch.float32


# ------------------------------------------------------------------ Taichi kernels
# Module-level kernels on torch tensors (ti.types.ndarray): they compile once per process and
# dtype, whatever the number of simulators; the material model is a compile-time template.
# Shapes: x, v [P,3]; C, F [P,3,3]; mat [P,4] = (mass, volume, mu, lambda); grid_v [n,n,n,3];
# grid_m [n,n,n]; params [15] = gravity, ground point, ground normal, ground mode, friction,
# ground on/off, box_lo.


@ti.func
def _load_vec(a: ti.template(), p):
    return ti.Vector([a[p, 0], a[p, 1], a[p, 2]])


@ti.func
def _load_mat(a: ti.template(), p):
    return ti.Matrix([[a[p, i, j] for j in ti.static(range(3))] for i in ti.static(range(3))])


@ti.func
def _kirchhoff(F, mu, lam, corotated: ti.template()):
    """Kirchhoff stress tau = P F^T at deformation gradient F."""
    J = F.determinant()
    eye = ti.Matrix.identity(float, 3)
    tau = ti.Matrix.zero(float, 3, 3)
    if ti.static(corotated):
        U, sig, V = ti.svd(F)
        R = U @ V.transpose()
        tau = 2.0 * mu * (F - R) @ F.transpose() + eye * (lam * J * (J - 1.0))
    else:
        tau = mu * (F @ F.transpose() - eye) + eye * (lam * ti.log(J))
    return tau


@ti.kernel
def _p2g(x: ti.types.ndarray(), v: ti.types.ndarray(), C: ti.types.ndarray(), F: ti.types.ndarray(),
         mat: ti.types.ndarray(), grid_v: ti.types.ndarray(), grid_m: ti.types.ndarray(),
         params: ti.types.ndarray(), inv_dx: float, dt: float, corotated: ti.template(),
         serial: ti.template()):
    n_grid = grid_m.shape[0]
    lo = ti.Vector([params[12], params[13], params[14]])
    # serial: one thread, so that the scatter sums in a fixed order and runs repeat bit for bit
    ti.loop_config(serialize=serial)
    for p in range(x.shape[0]):
        Xp = (_load_vec(x, p) - lo) * inv_dx
        base = ti.max(ti.min(ti.cast(Xp - 0.5, ti.i32), n_grid - 3), 0)
        fx = Xp - ti.cast(base, float)
        w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2]
        Cp = _load_mat(C, p)
        Fp = (ti.Matrix.identity(float, 3) + dt * Cp) @ _load_mat(F, p)
        for i, j in ti.static(ti.ndrange(3, 3)):
            F[p, i, j] = Fp[i, j]
        mass = mat[p, 0]
        tau = _kirchhoff(Fp, mat[p, 2], mat[p, 3], corotated)
        affine = -dt * mat[p, 1] * 4.0 * inv_dx * inv_dx * tau + mass * Cp
        mv = mass * _load_vec(v, p)
        for i, j, k in ti.static(ti.ndrange(3, 3, 3)):
            offset = ti.Vector([i, j, k])
            dpos = (ti.cast(offset, float) - fx) / inv_dx
            weight = w[i][0] * w[j][1] * w[k][2]
            node = base + offset
            dm = weight * (mv + affine @ dpos)
            for d in ti.static(range(3)):
                grid_v[node[0], node[1], node[2], d] += dm[d]
            grid_m[node] += weight * mass


@ti.kernel
def _grid_update(grid_v: ti.types.ndarray(), grid_m: ti.types.ndarray(), params: ti.types.ndarray(),
                 dx: float, dt: float):
    n_grid = grid_m.shape[0]
    g = ti.Vector([params[0], params[1], params[2]])
    gp = ti.Vector([params[3], params[4], params[5]])
    gn = ti.Vector([params[6], params[7], params[8]])
    mode = ti.cast(params[9], ti.i32)
    mu_f = params[10]
    on = params[11]
    lo = ti.Vector([params[12], params[13], params[14]])
    for a, b, c in grid_m:
        m = grid_m[a, b, c]
        if m > 0:
            I = ti.Vector([a, b, c])
            v = ti.Vector([grid_v[a, b, c, 0], grid_v[a, b, c, 1], grid_v[a, b, c, 2]]) / m + dt * g
            if on > 0.5:
                if (lo + ti.cast(I, float) * dx - gp).dot(gn) < -(CONTACT_GAP - 0.5) * dx:  # a node the ground holds
                    vn = v.dot(gn)
                    if mode == 0:  # sticky
                        v = ti.Vector.zero(float, 3)
                    elif vn < 0:  # slip / friction: only an inward normal velocity is removed
                        vt = v - vn * gn
                        if mode == 2:  # Coulomb: tangential speed reduced by mu |vn|
                            vt_norm = vt.norm()
                            if vt_norm > 0:
                                vt *= ti.max(0.0, 1.0 + mu_f * vn / vt_norm)
                        v = vt
            for d in ti.static(range(3)):  # walls: separating boundary at the box faces
                if I[d] < WALL_CELLS and v[d] < 0:
                    v[d] = 0.0
                if I[d] > n_grid - 1 - WALL_CELLS and v[d] > 0:
                    v[d] = 0.0
            for d in ti.static(range(3)):
                grid_v[a, b, c, d] = v[d]


@ti.kernel
def _g2p(x: ti.types.ndarray(), v: ti.types.ndarray(), C: ti.types.ndarray(), grid_v: ti.types.ndarray(),
         params: ti.types.ndarray(), inv_dx: float, dt: float):
    n_grid = grid_v.shape[0]
    lo = ti.Vector([params[12], params[13], params[14]])
    for p in range(x.shape[0]):
        Xp = (_load_vec(x, p) - lo) * inv_dx
        base = ti.max(ti.min(ti.cast(Xp - 0.5, ti.i32), n_grid - 3), 0)
        fx = Xp - ti.cast(base, float)
        w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2]
        new_v = ti.Vector.zero(float, 3)
        new_C = ti.Matrix.zero(float, 3, 3)
        for i, j, k in ti.static(ti.ndrange(3, 3, 3)):
            offset = ti.Vector([i, j, k])
            dpos = (ti.cast(offset, float) - fx) / inv_dx
            weight = w[i][0] * w[j][1] * w[k][2]
            node = base + offset
            gv = ti.Vector([grid_v[node[0], node[1], node[2], d] for d in ti.static(range(3))])
            new_v += weight * gv
            new_C += 4.0 * inv_dx * inv_dx * weight * gv.outer_product(dpos)
        for d in ti.static(range(3)):
            v[p, d] = new_v[d]
            x[p, d] += dt * new_v[d]
        for i, j in ti.static(ti.ndrange(3, 3)):
            C[p, i, j] = new_C[i, j]


class MPMSimulator:
    """MLS-MPM state for one particle set on one grid; the kernels are shared module-level ones.

    x0: rest positions [P,3] (metres); youngs_modulus, poisson_ratio, density: scalars or [P];
    grid: nodes per side of the cubic box [box_lo, box_lo + box_size]; particle_volume: the rest
    volume of one particle (default (dx/2)^3, i.e. 8 particles per cell); model: "neohookean" or
    "corotated"; gravity: a 3-vector; ground: a :class:`Ground` or None; cfl: the fraction of a
    cell a P-wave may cross in one substep; max_halvings: retries of an unstable frame;
    deterministic: scatter particles to the grid on one thread so that runs repeat bit for bit
    (default: on for the CPU, off for CUDA, where atomic float sums have no fixed order).
    State (torch tensors in Taichi's default precision, allocated here): x, v [P,3], C, F [P,3,3].
    """

    def __init__(self, x0, youngs_modulus=5e4, poisson_ratio=0.3, density=1000.0, *, grid: int = 64,
                 box_lo=(-0.5, -0.1, -0.5), box_size: float = 1.0, particle_volume: float | None = None,
                 model: str = "neohookean", gravity=(0.0, -9.8, 0.0), ground: Ground | None = None,
                 cfl: float = 0.3, max_halvings: int = 4, deterministic: bool | None = None):
        import torch

        require_taichi()
        x0 = np.asarray(x0, dtype=np.float64)
        if x0.ndim != 2 or x0.shape[1] != 3 or len(x0) == 0:
            raise SgausError(f"particle positions must be a non-empty [P,3] array, got shape {x0.shape}")
        if model not in MODELS:
            raise SgausError(f"unknown material model {model!r}: choose one of {', '.join(MODELS)}")
        if int(grid) < 2 * WALL_CELLS + 2:
            raise SgausError(f"the grid needs at least {2 * WALL_CELLS + 2} nodes per side, got {grid}")
        if not box_size > 0:
            raise SgausError(f"the box size must be positive, got {box_size}")
        n = len(x0)
        self.n_particles, self.n_grid = n, int(grid)
        self.box_lo = np.asarray(box_lo, dtype=np.float64).reshape(3)
        self.box_size = float(box_size)
        self.dx = self.box_size / self.n_grid
        E = _per_particle(youngs_modulus, n, "Young's modulus")
        nu = _per_particle(poisson_ratio, n, "Poisson ratio")
        rho = _per_particle(density, n, "density")
        check_material(E, nu, rho)
        inner_lo = self.box_lo + WALL_CELLS * self.dx
        inner_hi = self.box_lo + self.box_size - WALL_CELLS * self.dx
        if np.any(x0 < inner_lo) or np.any(x0 > inner_hi):
            raise SgausError("the object does not fit inside the simulation box: make it smaller or move it")
        self.model = model
        self.gravity_vec = np.asarray(gravity, dtype=np.float64).reshape(3)
        self.ground = ground
        self.cfl, self.max_halvings = float(cfl), int(max_halvings)
        self.wave_speed = wave_speed(E, nu, rho)
        vol = float(particle_volume) if particle_volume else (0.5 * self.dx) ** 3
        mu, lam = lame_parameters(E, nu)

        self.dtype = _torch_dtype()
        # tensors live where Taichi runs, so that kernels read them in place
        self.device = torch.device("cuda" if current_arch() == "cuda" else "cpu")
        opts = dict(dtype=self.dtype, device=self.device)
        tt = lambda a: torch.tensor(np.asarray(a), **opts)  # a copy: never alias the caller's array  # noqa: E731
        self.x = tt(x0)
        self.v = torch.zeros(n, 3, **opts)
        self.C = torch.zeros(n, 3, 3, **opts)
        self.F = torch.eye(3, **opts).repeat(n, 1, 1)
        self.mat = tt(np.stack([rho * vol, np.full(n, vol), mu, lam], axis=1))
        self.grid_v = torch.zeros((self.n_grid,) * 3 + (3,), **opts)
        self.grid_m = torch.zeros((self.n_grid,) * 3, **opts)
        self.params = tt(self._params())
        self.deterministic = bool(current_arch() != "cuda") if deterministic is None else bool(deterministic)
        self.time = 0.0
        self.substeps_per_frame: int | None = None

    # ----------------------------------------------------------------- configuration
    def _params(self) -> np.ndarray:
        g = self.ground
        p = np.zeros(15)
        p[0:3] = self.gravity_vec
        p[7] = 1.0
        if g is not None:
            p[3:6], p[6:9] = g.point, g.normal
            p[9], p[10], p[11] = GROUND_MODES.index(g.mode), g.friction, 1.0
        p[12:15] = self.box_lo
        return p

    def set_velocity(self, velocity) -> None:
        """Give the particles the velocity ``velocity`` (a 3-vector or [P,3])."""
        v = np.broadcast_to(np.asarray(velocity, dtype=np.float64), (self.n_particles, 3))
        self.v.copy_(self.v.new_tensor(np.ascontiguousarray(v)))

    @property
    def particle_mass(self) -> np.ndarray:
        return self.mat[:, 0].double().cpu().numpy().copy()

    def get_state(self) -> dict:
        """Copies of x, v, C and F as NumPy arrays."""
        return {k: getattr(self, k).cpu().numpy().copy() for k in ("x", "v", "C", "F")}

    def set_state(self, state: dict) -> None:
        for k in ("x", "v", "C", "F"):
            getattr(self, k).copy_(getattr(self, k).new_tensor(np.asarray(state[k])))

    def positions(self) -> np.ndarray:
        return self.x.cpu().numpy().copy()

    def kinetic_energy(self) -> float:
        v = self.v.double()
        return float(0.5 * (self.mat[:, 0].double() * (v * v).sum(1)).sum())

    def cfl_substep(self) -> float:
        """The largest stable substep by the wave-speed CFL condition, seconds."""
        return self.cfl * self.dx / self.wave_speed

    # ----------------------------------------------------------------- stepping
    def substep(self, dt: float) -> None:
        """One MLS-MPM substep of length ``dt``: P2G (with stress), grid update, G2P."""
        inv_dx = 1.0 / self.dx
        self.grid_v.zero_()
        self.grid_m.zero_()
        _p2g(self.x, self.v, self.C, self.F, self.mat, self.grid_v, self.grid_m, self.params, inv_dx, dt,
             self.model == "corotated", self.deterministic)
        _grid_update(self.grid_v, self.grid_m, self.params, self.dx, dt)
        _g2p(self.x, self.v, self.C, self.grid_v, self.params, inv_dx, dt)

    def advance(self, frame_dt: float) -> int:
        """Advance by one frame of ``frame_dt`` seconds and return the substeps used.

        Starts from the CFL substep (or the count a previous frame settled on); on NaN or
        ``max|v| dt >= dx`` restores the frame's start and doubles the substeps, at most
        ``max_halvings`` times, then raises ValueError.
        """
        if not frame_dt > 0:
            raise SgausError(f"the frame time step must be positive, got {frame_dt}")
        if self.substeps_per_frame is None:
            self.substeps_per_frame = max(1, math.ceil(frame_dt / self.cfl_substep()))
        saved = self.get_state()
        n_sub = self.substeps_per_frame
        for attempt in range(self.max_halvings + 1):
            dt = frame_dt / n_sub
            for _ in range(n_sub):
                self.substep(dt)
            finite = bool(self.x.isfinite().all() and self.v.isfinite().all() and self.F.isfinite().all())
            max_speed = float(self.v.norm(dim=1).max()) if finite else float("nan")
            if finite and max_speed * dt < self.dx:
                self.substeps_per_frame = n_sub
                self.time += frame_dt
                return n_sub
            self.set_state(saved)
            if attempt < self.max_halvings:
                n_sub *= 2
        reason = "the state became NaN" if not finite else f"particles reached {max_speed:.3g} m/s"
        raise SgausError(f"the simulation is unstable ({reason}) even with {n_sub} substeps per frame: "
                         "lower the Young's modulus or the velocity, or use a coarser --grid")


# ------------------------------------------------------------------ NumPy twin (tests)
def _bspline(fx: np.ndarray) -> list[np.ndarray]:
    return [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2]


def _kirchhoff_np(F: np.ndarray, mu: np.ndarray, lam: np.ndarray, model: str) -> np.ndarray:
    J = np.linalg.det(F)
    eye = np.eye(3)[None]
    if model == "corotated":
        U, _, Vt = np.linalg.svd(F)
        R = U @ Vt
        flip = np.linalg.det(R) < 0  # a reflection: make it the nearest rotation
        if np.any(flip):
            U[flip, :, 2] *= -1.0
            R = U @ Vt
        return 2.0 * mu[:, None, None] * (F - R) @ np.swapaxes(F, 1, 2) + (lam * J * (J - 1.0))[:, None, None] * eye
    return mu[:, None, None] * (F @ np.swapaxes(F, 1, 2) - eye) + (lam * np.log(J))[:, None, None] * eye


def numpy_substep(x, v, C, F, mass, vol, mu, lam, *, model: str, n_grid: int, box_lo, box_size: float,
                  dt: float, gravity, ground: Ground | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The plain-NumPy twin of :meth:`MPMSimulator.substep`: returns new (x, v, C, F)."""
    x, v, C, F = (np.asarray(a, dtype=np.float64) for a in (x, v, C, F))
    mass, vol, mu, lam = (np.asarray(a, dtype=np.float64) for a in (mass, vol, mu, lam))
    lo = np.asarray(box_lo, dtype=np.float64)
    inv_dx = n_grid / box_size
    dx = 1.0 / inv_dx
    Xp = (x - lo) * inv_dx
    base = np.clip((Xp - 0.5).astype(np.int64), 0, n_grid - 3)
    fx = Xp - base
    w = _bspline(fx)
    F = (np.eye(3)[None] + dt * C) @ F
    tau = _kirchhoff_np(F, mu, lam, model)
    affine = -dt * (vol * 4.0 * inv_dx * inv_dx)[:, None, None] * tau + mass[:, None, None] * C
    gv = np.zeros((n_grid, n_grid, n_grid, 3))
    gm = np.zeros((n_grid, n_grid, n_grid))
    offsets = [(i, j, k) for i in range(3) for j in range(3) for k in range(3)]
    for i, j, k in offsets:
        off = np.array([i, j, k])
        dpos = (off[None] - fx) * dx
        weight = w[i][:, 0] * w[j][:, 1] * w[k][:, 2]
        idx = tuple((base + off).T)
        np.add.at(gv, idx, weight[:, None] * (mass[:, None] * v + np.einsum("pij,pj->pi", affine, dpos)))
        np.add.at(gm, idx, weight * mass)
    has = gm > 0
    gv[has] = gv[has] / gm[has][:, None] + dt * np.asarray(gravity, dtype=np.float64)
    nodes = np.stack(np.meshgrid(*[np.arange(n_grid)] * 3, indexing="ij"), axis=-1)
    if ground is not None:
        n = np.asarray(ground.normal)
        below = has & (((lo + nodes * dx) - np.asarray(ground.point)) @ n < -(CONTACT_GAP - 0.5) * dx)
        vn = gv @ n
        if ground.mode == "sticky":
            gv[below] = 0.0
        else:
            inward = below & (vn < 0)
            vt = gv - vn[..., None] * n
            if ground.mode == "friction":
                vt_norm = np.linalg.norm(vt, axis=-1)
                scale = np.where(vt_norm > 0, np.maximum(0.0, 1.0 + ground.friction * vn / np.maximum(vt_norm, 1e-300)), 1.0)
                vt = vt * scale[..., None]
            gv[inward] = vt[inward]
    for d in range(3):
        low = has & (nodes[..., d] < WALL_CELLS) & (gv[..., d] < 0)
        high = has & (nodes[..., d] > n_grid - 1 - WALL_CELLS) & (gv[..., d] > 0)
        gv[..., d][low | high] = 0.0
    new_v = np.zeros_like(v)
    new_C = np.zeros_like(C)
    for i, j, k in offsets:
        off = np.array([i, j, k])
        dpos = (off[None] - fx) * dx
        weight = w[i][:, 0] * w[j][:, 1] * w[k][:, 2]
        g = gv[tuple((base + off).T)]
        new_v += weight[:, None] * g
        new_C += 4.0 * inv_dx * inv_dx * weight[:, None, None] * np.einsum("pi,pj->pij", g, dpos)
    return x + dt * new_v, new_v, new_C, F
