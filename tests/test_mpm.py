"""The MLS-MPM simulator: its Taichi substep against the NumPy twin, free flight, conservation,
contact, stiffness, and the CFL retry. Small grids (12^3 to 32^3) and a few thousand particles."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.generate import GenerateConfig, build_object, make_simulator, simulate_object
from taichi_sim import mpm


def _random_state(rng, n=200):
    x = rng.uniform(0.3, 0.7, (n, 3))
    x[:, 1] = rng.uniform(0.3, 0.5, n)
    v = rng.normal(size=(n, 3))
    C = rng.normal(size=(n, 3, 3)) * 2.0
    F = np.eye(3) + rng.normal(size=(n, 3, 3)) * 0.1
    return x, v, C, F


@pytest.mark.parametrize("model", mpm.MODELS)
@pytest.mark.parametrize("mode", [*mpm.GROUND_MODES, None])
def test_substep_matches_numpy_twin(model, mode):
    rng = np.random.default_rng(1)
    x, v, C, F = _random_state(rng)
    ground = None if mode is None else mpm.Ground((0.0, 0.4, 0.0), (0.1, 1.0, 0.0), mode, 0.4)
    kw = dict(grid=12, box_lo=(0.0, 0.0, 0.0), box_size=1.0, model=model, gravity=(0.5, -9.8, 0.2), ground=ground)
    E = rng.uniform(2e4, 8e4, len(x))  # heterogeneous, per particle
    sim = mpm.MPMSimulator(x, E, 0.3, 1000.0, **kw)
    sim.set_state({"x": x, "v": v, "C": C, "F": F})
    sim.substep(1e-3)
    got = sim.get_state()
    mass, vol, mu, lam = sim.mat.numpy().T
    ref = mpm.numpy_substep(x, v, C, F, mass, vol, mu, lam, model=model, n_grid=12, box_lo=kw["box_lo"],
                            box_size=1.0, dt=1e-3, gravity=kw["gravity"], ground=ground)
    for key, want in zip("xvCF", ref):
        np.testing.assert_allclose(got[key], want, rtol=1e-9, atol=1e-9 * np.abs(want).max(), err_msg=key)
    assert not np.allclose(got["v"], v)  # the step did something


def test_p2g_conserves_mass_and_momentum():
    rng = np.random.default_rng(2)
    x, v, C, F = _random_state(rng)
    sim = mpm.MPMSimulator(x, 5e4, 0.3, 1000.0, grid=12, box_lo=(0, 0, 0), box_size=1.0, gravity=(0, 0, 0))
    sim.set_state({"x": x, "v": v, "C": C, "F": F})
    sim.grid_v.zero_()
    sim.grid_m.zero_()
    mpm._p2g(sim.x, sim.v, sim.C, sim.F, sim.mat, sim.grid_v, sim.grid_m, sim.params, 1 / sim.dx, 1e-3, False, True)
    mass = sim.particle_mass
    assert float(sim.grid_m.sum()) == pytest.approx(mass.sum(), rel=1e-12)
    # APIC: the affine and stress terms carry no net momentum (the B-spline's first moment is zero)
    np.testing.assert_allclose(sim.grid_v.reshape(-1, 3).sum(0).numpy(), (mass[:, None] * v).sum(0), rtol=1e-10)


def _cfg(**kw):
    base = dict(shape="torus", grid=32, frames=12, views=1, resolution=16, size=0.4)
    base.update(kw)
    return GenerateConfig(**base)


def test_free_flight_is_ballistic_until_contact():
    cfg = _cfg(velocity=(0.4, 0.5, -0.3), frames=14)
    res = simulate_object(cfg, progress=False)
    assert res.contact_frame is not None and 5 <= res.contact_frame <= 12
    mass = res.mass
    com = (res.positions * mass[:, None]).sum(1) / mass.sum()
    t = np.arange(cfg.frames) * cfg.frame_dt
    expected = com[0] + np.outer(t, cfg.velocity) + 0.5 * np.outer(t ** 2, cfg.gravity)
    free = slice(1, res.contact_frame)
    travel = np.linalg.norm(expected[res.contact_frame - 1] - com[0])
    assert np.linalg.norm(com[free] - expected[free], axis=1).max() < 0.01 * travel
    # exactly: symplectic Euler with substep h adds g t h / 2 to the analytic curve
    h = cfg.frame_dt / res.substeps_per_frame
    discrete = expected + 0.5 * h * np.outer(t, cfg.gravity)
    np.testing.assert_allclose(com[free], discrete[free], rtol=0, atol=1e-9)
    # after contact the centre of mass leaves the ballistic curve (the ground pushes back)
    f = res.contact_frame + 2
    assert com[f, 1] - expected[f, 1] > 0.01
    # no particle is lost or duplicated; all positions finite
    assert res.positions.shape[1] == res.obj.n_particles and np.isfinite(res.positions).all()


def test_nothing_moves_without_gravity_or_velocity():
    cfg = _cfg(gravity=(0.0, 0.0, 0.0), velocity=(0.0, 0.0, 0.0), frames=4)
    res = simulate_object(cfg, progress=False)
    assert np.abs(res.positions - res.positions[0]).max() < 1e-6
    assert res.kinetic_energy.max() < 1e-12
    assert res.contact_frame is None


def _deformation(rest: np.ndarray, cur: np.ndarray) -> float:
    """RMS distance left after the best rigid fit of rest onto cur (Kabsch), metres."""
    a, b = rest - rest.mean(0), cur - cur.mean(0)
    U, _, Vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(U @ Vt))
    R = U @ np.diag([1.0, 1.0, d]) @ Vt
    return float(np.sqrt(np.mean(np.sum((a @ R - b) ** 2, axis=1))))


def _max_deformation(positions, sel=slice(None)):
    rest = positions[0][sel].astype(np.float64)
    return max(_deformation(rest, p[sel].astype(np.float64)) for p in positions)


def test_soft_object_deforms_more_than_stiff():
    soft = simulate_object(_cfg(shape="box", size=0.3, youngs_modulus=2e4), progress=False)
    stiff = simulate_object(_cfg(shape="box", size=0.3, youngs_modulus=4e5), progress=False)
    d_soft, d_stiff = _max_deformation(soft.positions), _max_deformation(stiff.positions)
    assert d_soft > 2.0 * d_stiff, (d_soft, d_stiff)
    assert d_soft > 0.005  # a visible squash: millimetres, not round-off


def test_stiff_half_of_heterogeneous_object_deforms_less():
    res = simulate_object(_cfg(shape="box", size=0.3, youngs_modulus=2e4, heterogeneous=True,
                               stiffness_factor=20.0), progress=False)
    part = res.obj.part
    assert set(np.unique(part)) == {0, 1}
    assert np.all(res.youngs_modulus[part == 1] == 20.0 * res.youngs_modulus[part == 0][0])
    d_soft = _max_deformation(res.positions, part == 0)
    d_stiff = _max_deformation(res.positions, part == 1)
    assert d_stiff < 0.6 * d_soft, (d_soft, d_stiff)


@pytest.mark.parametrize("mode", ["sticky", "friction"])
def test_object_stays_on_the_ground_and_energy_decays(mode):
    cfg = _cfg(shape="sphere", size=0.25, ground=mode, frames=40, drop_height=0.15, youngs_modulus=3e4)
    res = simulate_object(cfg, progress=False)
    c = res.contact_frame
    assert c is not None
    low = res.positions[..., 1].min(axis=1)
    assert low.min() > cfg.ground_height - cfg.dx  # never sinks through the plane (one cell of slack)
    g = -cfg.gravity[1]
    com_y = (res.positions[..., 1] * res.mass).sum(1) / res.mass.sum()
    mech = res.kinetic_energy + res.mass.sum() * g * (com_y - cfg.ground_height)
    assert mech[-1] < 0.8 * mech[0]  # the contact dissipates
    third = cfg.frames // 3
    ke = res.kinetic_energy
    assert ke[-third:].max() < 0.7 * ke[:third].max()  # each bounce carries less kinetic energy
    apex = [com_y[f] for f in range(c, cfg.frames - 1) if com_y[f - 1] < com_y[f] >= com_y[f + 1]]
    assert len(apex) >= 2 and all(b < a for a, b in zip([com_y[0], *apex], apex))  # lower and lower bounces


@pytest.mark.parametrize("mode, grid, ground_height", [
    ("sticky", 32, 0.0), ("slip", 32, 0.0), ("friction", 32, 0.0), ("friction", 24, 0.0137)])
def test_object_comes_to_rest_on_the_declared_plane(mode, grid, ground_height):
    # a box dropped 2 cm; generator version 1 left its lowest particles 0.5 to 0.7 cells above the plane
    cfg = _cfg(shape="box", size=0.15, grid=grid, ground=mode, ground_height=ground_height,
               drop_height=ground_height + 0.02, frames=40)
    res = simulate_object(cfg, progress=False)
    low = (res.positions[-10:, :, 1].min(axis=1) - ground_height) / cfg.dx  # lowest particle, in cells
    assert np.ptp(low) < 0.05, low  # at rest (settled to 1.5 mm)
    assert np.all(np.abs(low) < 0.25), low


def test_ground_holds_the_nodes_below_the_contact_gap():
    # one particle moving down above a horizontal ground; its stencil covers node rows 5, 6, 7.
    # Row 6 lies 0.1 cells below the plane: version 1 held it, now only rows more than
    # CONTACT_GAP - 0.5 cells below are held (row 5) and the rest move freely
    dx = 1.0 / 16
    ground = mpm.Ground((0.0, 6.1 * dx, 0.0), (0.0, 1.0, 0.0), "sticky")
    sim = mpm.MPMSimulator(np.array([[0.5, 6.4 * dx, 0.5]]), grid=16, box_lo=(0, 0, 0), box_size=1.0, ground=ground,
                           gravity=(0, 0, 0))
    sim.set_velocity((0.0, -1.0, 0.0))
    sim.substep(1e-4)
    m, vy = sim.grid_m.numpy(), sim.grid_v.numpy()[..., 1]
    assert list(np.flatnonzero(m.sum((0, 2)) > 0)) == [5, 6, 7]
    assert np.all(vy[:, 5][m[:, 5] > 0] == 0.0)
    assert np.all(vy[:, 6][m[:, 6] > 0] < 0.0) and np.all(vy[:, 7][m[:, 7] > 0] < 0.0)


def test_aligned_grid_puts_a_node_row_contact_gap_below_the_plane():
    for grid, height in ((32, 0.0), (64, 0.0), (24, 0.0137), (16, -0.2)):
        dx = 1.0 / grid
        lo = mpm.ground_aligned_lo(height, dx, 0.1)
        rows = (height - lo) / dx - mpm.CONTACT_GAP  # whole cells from the lowest row to the highest held one
        assert rows == pytest.approx(round(rows), abs=1e-9)
        assert round(rows) >= mpm.WALL_CELLS - 1  # no wall node above the ground's highest held row
        assert abs(height - lo - 0.1) <= dx or round(rows) == mpm.WALL_CELLS - 1  # about the depth asked for


def test_cfl_violation_halves_the_substep_and_retries():
    obj, E = build_object(_cfg(velocity=(0.0, -2.0, 0.0)))
    sim = mpm.MPMSimulator(obj.x, E, 0.3, 1000.0, grid=32, box_lo=(-0.5, -0.1, -0.5), box_size=1.0, cfl=20.0,
                           ground=mpm.Ground(), max_halvings=6)
    sim.set_velocity((0.0, -2.0, 0.0))
    first = max(1, int(np.ceil(0.03 / sim.cfl_substep())))
    for _ in range(10):
        sim.advance(0.03)
    assert sim.substeps_per_frame > first
    assert np.isfinite(sim.positions()).all()


def test_unstable_simulation_fails_clearly():
    obj, E = build_object(_cfg())
    sim = mpm.MPMSimulator(obj.x, E, 0.3, 1000.0, grid=32, box_lo=(-0.5, -0.1, -0.5), box_size=1.0, cfl=200.0,
                           ground=mpm.Ground(), max_halvings=1)
    sim.set_velocity((0.0, -3.0, 0.0))  # 9 cm per substep of 0.03 s / 2: three cells
    before = sim.get_state()
    with pytest.raises(ValueError, match="unstable .* 2 substeps per frame"):
        sim.advance(0.03)
    np.testing.assert_array_equal(sim.positions(), before["x"])  # the failed frame was rolled back


@pytest.mark.parametrize("kw, msg", [
    (dict(youngs_modulus=-1.0), "Young"), (dict(poisson_ratio=0.5), "Poisson"), (dict(poisson_ratio=-1.0), "Poisson"),
    (dict(density=0.0), "density"), (dict(model="plastic"), "material model"),
])
def test_bad_material_is_rejected(kw, msg):
    x = np.random.default_rng(0).uniform(0.4, 0.6, (50, 3))
    with pytest.raises(ValueError, match=msg):
        mpm.MPMSimulator(x, **{"youngs_modulus": 5e4, **kw}, grid=16, box_lo=(0, 0, 0), box_size=1.0)


def test_object_outside_the_box_is_rejected():
    x = np.array([[0.5, 0.5, 0.5], [0.99, 0.5, 0.5]])
    with pytest.raises(ValueError, match="does not fit"):
        mpm.MPMSimulator(x, grid=16, box_lo=(0, 0, 0), box_size=1.0)


def test_simulator_from_generator_settings_uses_per_particle_modulus():
    cfg = _cfg(heterogeneous=True, stiffness_factor=5.0)
    obj, E = build_object(cfg)
    sim = make_simulator(cfg, obj, E)
    mu = sim.mat[:, 2].numpy()
    assert mu[obj.part == 1].min() == pytest.approx(5.0 * mu[obj.part == 0].max())
