"""Physics, settings and input checks of the spring-mass simulator (taichi_sim/spring_model.py,
spring_params.py, spring_rollout.py and its twin spring_torch.py)."""
import math

import pytest
import torch

from taichi_sim import spring_torch
from taichi_sim.errors import SgausError
from taichi_sim.spring_model import SpringModel, build_spring_model
from taichi_sim.spring_params import SpringParams, friction_from_logit, friction_logit, soft_vector
from taichi_sim.spring_rollout import Integrator, SimulationUnstable, SpringState, rollout, rollout_with_retry

F64 = torch.float64
ROLLOUTS = {"taichi": rollout, "torch": spring_torch.rollout}


def run(model, integ, x0, v0, log_k, kappa, phi, n_frames, backend="taichi"):
    """(positions, v_last) of a rollout from (x0, v0) with the given parameters."""
    traj = ROLLOUTS[backend](model, SpringParams(log_k, kappa, phi), SpringState(x0, v0), n_frames, integ)
    return traj.positions, traj.v_last


def _lattice(n_side, spacing, origin=(0.0, 0.0, 0.0)):
    r = torch.arange(n_side, dtype=F64) * spacing
    g = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    return g + torch.tensor(origin, dtype=F64)


def _sheet(n_side, spacing):
    r = torch.arange(n_side, dtype=F64) * spacing
    gx, gz = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([gx.reshape(-1), torch.zeros(n_side * n_side, dtype=F64), gz.reshape(-1)], -1)


def _params(model, log_k=3.0, kappa=0.0, phi=-1.0):
    n = model.n_anchors
    return torch.full((n,), log_k, dtype=F64), torch.tensor(kappa, dtype=F64), torch.tensor(phi, dtype=F64)


# ----------------------------------------------------------------------------- model and settings
def test_build_model_neighbours_sorted_self_excluded():
    pts = torch.rand(50, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    m = build_spring_model(pts, 6)
    assert m.neighbors.shape == (50, 6) and m.neighbors.dtype == torch.int64
    assert not (m.neighbors == torch.arange(50)[:, None]).any()
    assert torch.all(m.rest_length[:, 1:] >= m.rest_length[:, :-1])
    brute = torch.cdist(pts, pts)
    brute.fill_diagonal_(float("inf"))
    assert torch.allclose(m.rest_length, brute.topk(6, largest=False).values, atol=1e-12)
    assert torch.allclose(m.rest_length, (pts[:, None] - pts[m.neighbors]).norm(dim=-1), atol=1e-12)


@pytest.mark.parametrize("kappa", [-3.0, 0.0, 0.7, 2.5])
def test_soft_vector_matches_eq8(kappa):
    k, n_c = 40, 8
    eta = soft_vector(torch.tensor(kappa, dtype=F64), k, n_c)
    sp = math.log1p(math.exp(kappa))
    expected = [1.0] * n_c + [min(max(2.0 - math.exp(sp * j / (k - n_c)), 0.0), 1.0) for j in range(k - n_c)]
    assert eta.shape == (k,)
    assert torch.allclose(eta, torch.tensor(expected, dtype=F64), atol=1e-14)
    if kappa >= 0.7:
        assert float(eta[-1]) == 0.0  # large kappa cuts the far springs off


def test_friction_logit_round_trip_and_ends():
    for value in (0.0, 0.22, 0.5, 0.9, 1.0):
        phi = torch.tensor(friction_logit(value), dtype=F64)
        assert float(friction_from_logit(phi)) == pytest.approx(value, abs=1e-12)
    assert float(friction_from_logit(torch.tensor(-1.0))) == pytest.approx(1.2 / (1 + math.e) - 0.1, abs=1e-6)
    with pytest.raises(ValueError, match="friction"):
        friction_logit(1.5)


# ----------------------------------------------------------------------------- physics
@pytest.mark.parametrize("backend", ["taichi", "torch"])
def test_free_fall_is_semi_implicit_euler(backend):
    """Springs at rest and a uniform velocity: every anchor falls freely. Semi-implicit Euler
    gives x_n = x0 + v0 t + g t^2/2 + g t dt/2 exactly, so the deviation from the analytic
    parabola is g t dt / 2 (checked to 1e-9), which is below 1e-3 |g| t^2 here."""
    cfg = Integrator(frame_dt=0.03, substeps=50)
    x0 = _lattice(3, 0.1, (0.0, 1.0, 0.0))
    m = build_spring_model(x0, 6, ground_point=None)
    v0 = torch.tensor([0.5, 2.0, -0.3], dtype=F64)
    pos, v = run(m, cfg, x0, v0, *_params(m), n_frames=10, backend=backend)
    g = torch.tensor(m.gravity, dtype=F64)
    dt = cfg.frame_dt / cfg.substeps
    t = torch.arange(11, dtype=F64)[:, None, None] * cfg.frame_dt
    analytic = x0 + v0 * t + 0.5 * g * t ** 2
    assert torch.allclose(pos, analytic + 0.5 * g * t * dt, atol=1e-9)
    assert float((pos - analytic).abs().max()) <= 0.5 * 9.8 * 0.3 * dt + 1e-9
    assert torch.allclose(v, (v0 + g * 0.3).expand(27, 3), atol=1e-9)


def test_object_resting_on_ground_stays_put():
    """A stiff cube standing on the ground sags a little under gravity, then rests: it settles
    without creeping, nothing goes below the ground, and kinetic + gravitational energy (m = 1) never rises above
    its value at the start (the springs start unstretched, damping and contact only dissipate)."""
    cfg = Integrator(frame_dt=0.02, substeps=60)
    x0 = _lattice(4, 0.05)
    m = build_spring_model(x0, 20, n_c=20)
    log_k, kappa, phi = _params(m, log_k=3.0)
    x, v = x0, torch.zeros(64, 3, dtype=F64)
    energy0 = 9.8 * float(x0[:, 1].sum())
    positions, energies = [x0], []
    for _frame in range(40):  # one frame at a time, to read the exact velocity of every frame
        pos, v = run(m, cfg, x, v, log_k, kappa, phi, n_frames=1)
        x = pos[1]
        positions.append(x)
        energies.append(0.5 * float((v ** 2).sum()) + 9.8 * float(x[:, 1].sum()))
    pos = torch.stack(positions)
    assert max(energies) <= energy0 + 1e-9
    assert float(pos[..., 1].min()) >= -1e-12  # never below the ground
    centroid = pos.mean(1)
    # The sagged cube's bottom anchors carry tangential spring forces, and directed springs (kNN
    # lists are not symmetric at the faces) do not cancel them; the velocity-multiplying friction
    # of the model (as in the authors' code) lets that creep, slowly: under 1 mm in 0.8 s here.
    assert float((centroid[:, [0, 2]] - centroid[0, [0, 2]]).abs().max()) < 1e-3
    assert float((pos[-1] - x0).abs().max()) < 0.01  # sags less than a fifth of the spacing
    assert float(v.norm(dim=-1).max()) < 0.05  # small residual oscillation (zeta0 = 0.1 damps slowly)
    assert float((pos[-1] - pos[-5]).abs().max()) < 1e-3


def test_unloaded_sheet_on_ground_does_not_move():
    """All anchors on the ground, springs at rest: gravity is cancelled by the contact and nothing
    moves at all, whatever the friction."""
    cfg = Integrator(frame_dt=0.03, substeps=30)
    x0 = _sheet(4, 0.05)
    m = build_spring_model(x0, 8)
    pos, v = run(m, cfg, x0, torch.zeros(3, dtype=F64), *_params(m, phi=2.0), n_frames=20)
    assert float((pos - x0).abs().max()) == 0.0
    assert float(v.abs().max()) == 0.0


@pytest.mark.parametrize("value, expected_x, expected_v", [(0.0, 0.0015, 0.0), (1.0, 0.3, 1.0)])
def test_ground_friction_sticky_and_smooth(value, expected_x, expected_v):
    """A sheet lying on the ground and sliding at 1 unit/s along x: friction factor 0 stops it
    in the first substep (after that substep's Euler move of 1 * dt = 0.0015), 1 keeps the
    tangential speed."""
    cfg = Integrator(frame_dt=0.03, substeps=20)
    x0 = _sheet(3, 0.1)
    m = build_spring_model(x0, 4)
    log_k, kappa, _ = _params(m)
    phi = torch.tensor(friction_logit(value), dtype=F64)
    pos, v = run(m, cfg, x0, torch.tensor([1.0, 0.0, 0.0], dtype=F64), log_k, kappa, phi, n_frames=10)
    shift = pos[-1] - x0
    assert torch.allclose(shift[:, 0], torch.full((9,), expected_x, dtype=F64), atol=1e-9)
    assert float(shift[:, 1:].abs().max()) < 1e-12
    assert torch.allclose(v, torch.tensor([expected_v, 0.0, 0.0], dtype=F64).expand(9, 3), atol=1e-9)


def test_float32_rollout_agrees_with_float64():
    cfg = Integrator(frame_dt=0.03, substeps=20)
    x0 = _lattice(3, 0.05, (0.0, 0.02, 0.0))
    m = build_spring_model(x0, 8)
    args = (torch.tensor([0.2, -1.0, 0.0], dtype=F64), *_params(m, log_k=2.5, kappa=0.3))
    p64, _ = run(m, cfg, x0, *args, n_frames=5)
    p32, v32 = run(m, cfg, x0.float(), *[a.float() for a in args], n_frames=5)
    assert p32.dtype == torch.float32 and v32.dtype == torch.float32
    assert float((p32.double() - p64).abs().max()) < 1e-4


def test_n_frames_zero_returns_the_start():
    m = build_spring_model(_lattice(2, 0.1), 3)
    x0 = m.rest_positions
    pos, v = run(m, Integrator(), x0, torch.ones(3, dtype=F64), *_params(m), n_frames=0)
    assert pos.shape == (1, 8, 3) and torch.equal(pos[0], x0) and torch.equal(v, torch.ones(8, 3, dtype=F64))


# ----------------------------------------------------------------------------- instability
def test_unstable_simulation_raises_and_retry_recovers():
    cfg = Integrator(frame_dt=0.03, substeps=2, max_substeps=252)
    x0 = _lattice(3, 0.05)
    m = build_spring_model(x0, 6, ground_point=None)
    stretched = x0 * 1.2
    log_k, kappa, phi = _params(m, log_k=3.0)
    params, state = SpringParams(log_k, kappa, phi), SpringState(stretched, torch.zeros(3, dtype=F64))
    with pytest.raises(SimulationUnstable, match=r"frame \d+ with 2 substeps.*more substeps"):
        rollout(m, params, state, 5, cfg)
    traj = rollout_with_retry(m, params, state, 5, cfg)
    pos, substeps = traj.positions, traj.substeps
    assert 2 < substeps <= 252 and (substeps - 2) % 50 == 0
    assert torch.isfinite(pos).all()
    tight = Integrator(frame_dt=0.03, substeps=2, max_substeps=40)
    with pytest.raises(SimulationUnstable):
        rollout_with_retry(m, params, state, 5, tight)


@pytest.mark.parametrize("backend", ["taichi", "torch"])
def test_an_integrator_that_gains_energy_is_unstable_before_any_speed_runs_away(backend):
    """A 15 cm cube dropped 10 cm at a stiffness just past what 20 substeps per frame can
    integrate: its energy grows a few percent per frame while every speed stays plausible, so the
    speed limit alone let it through with anchors at 17 m/s after 30 frames (the drop's energy
    allows 1.4 m/s on average). The energy check stops it, naming the energy; the retry's extra
    substeps integrate it; a start that may lawfully supply energy (stretched springs, anchors below
    the ground) is not flagged."""
    simulate = ROLLOUTS[backend]
    x0 = _lattice(4, 0.05, (0.0, 0.1, 0.0))
    m = build_spring_model(x0, 20, n_c=20)
    params = SpringParams(*_params(m, log_k=3.65))
    state = SpringState(x0, torch.zeros(3, dtype=F64))
    speed_only = Integrator(frame_dt=0.03, substeps=20, energy_tolerance=None)
    garbage = simulate(m, params, state, 30, speed_only)
    assert float(garbage.v_last.norm(dim=1).max()) > 10.0
    with pytest.raises(SimulationUnstable, match=r"frame \d+ with 20 substeps .*energy rose above"):
        simulate(m, params, state, 30, Integrator(frame_dt=0.03, substeps=20))
    traj = rollout_with_retry(m, params, state, 30, Integrator(frame_dt=0.03, substeps=20), simulate=simulate)
    assert traj.substeps > 20
    assert float(traj.v_last.norm(dim=1).max()) < 5.0  # vibrating after the landing, not scattered
    # lawful sources of energy, on the same cube with every spring mirrored (the k-nearest graph
    # above has springs that pull one end only, which can feed a rocking cube energy of its own):
    # springs stretched 30 %, and anchors starting 3 cm below the ground (lifted onto it): both
    # would be flagged at the first frame without the strain energy they bring
    mirrored = build_spring_model(x0, 63, n_c=63)
    params = SpringParams(*_params(mirrored, log_k=3.0))
    stable = Integrator(frame_dt=0.03, substeps=40)
    for start in (x0 * 1.3 + torch.tensor([0.0, 0.05, 0.0], dtype=F64), x0 - torch.tensor([0.0, 0.13, 0.0], dtype=F64)):
        simulate(mirrored, params, SpringState(start, torch.zeros(3, dtype=F64)), 30, stable)


def test_mirrored_springs_conserve_momentum_and_never_gain_energy():
    """Directed k-nearest springs pull one end only: in free space they change the total momentum,
    and a cube rocking on the ground gains energy of its own (here 3x what it started with). With
    every spring acting on both its ends, momentum is kept to rounding error and the energy only
    falls, whatever the stiffness field."""
    x0 = _lattice(4, 0.05, (0.0, 0.1, 0.0))
    gen = torch.Generator().manual_seed(0)
    v0 = torch.randn(64, 3, generator=gen, dtype=F64)
    field = 3.0 + torch.rand(64, generator=gen, dtype=F64)
    free = Integrator(frame_dt=0.03, substeps=200)
    momentum = {}
    for springs in ("directed", "mirrored"):
        m = build_spring_model(x0, 20, n_c=20, ground_point=None, gravity=(0.0, 0.0, 0.0), springs=springs,
                               spring_stiffness="pair")
        traj = rollout(m, SpringParams(field, torch.tensor(0.0, dtype=F64), torch.tensor(0.0, dtype=F64)),
                       SpringState(x0, v0), 5, free)
        momentum[springs] = float((traj.v_last.sum(0) - v0.sum(0)).abs().max())
    assert momentum["mirrored"] < 1e-9 < 1e-3 < momentum["directed"]
    start = x0 - torch.tensor([0.0, 0.105, 0.0], dtype=F64)  # 5 mm below the ground: it rocks
    rocking = Integrator(frame_dt=0.03, substeps=120, energy_tolerance=None)
    for springs in ("directed", "mirrored"):
        m = build_spring_model(x0, 20, n_c=20, springs=springs)
        x, v, energies = start, torch.zeros(64, 3, dtype=F64), []
        for _frame in range(30):
            pos, v = run(m, rocking, x, v, *_params(m, log_k=3.65), n_frames=1)
            x = pos[1]
            energies.append(0.5 * float((v ** 2).sum()) + 9.8 * float(x[:, 1].sum()))
        # from the end of the first frame (the ground has lifted the bottom layer by then)
        if springs == "directed":
            assert max(energies[1:]) > 3 * energies[0]
        else:
            assert max(energies[1:]) <= energies[0]


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_error():
    x0 = _lattice(2, 0.1)
    m = build_spring_model(x0, 3)
    log_k, kappa, phi = _params(m)
    v0 = torch.zeros(3, dtype=F64)
    integ = Integrator()
    cases = [
        (lambda: build_spring_model(x0, 8), "k_neighbors=8"),
        (lambda: build_spring_model(x0[:, :2], 3), r"\[N,3\]"),
        (lambda: build_spring_model(torch.cat([x0, x0[:1]]), 3), "coincide"),
        (lambda: Integrator(frame_dt=0.0), "frame_dt"),
        (lambda: Integrator(frame_dt=-0.1), "frame_dt"),
        (lambda: Integrator(substeps=0), "substeps"),
        (lambda: build_spring_model(x0, 3, force_law="hooke"), "force_law"),
        (lambda: build_spring_model(x0, 3, ground_normal=(0, 0, 0)), "ground_normal"),
        (lambda: run(m, integ, x0[:5], v0, log_k, kappa, phi, 1), "x0"),
        (lambda: run(m, integ, x0, torch.zeros(2, dtype=F64), log_k, kappa, phi, 1), "v0"),
        (lambda: run(m, integ, x0, v0, log_k[:3], kappa, phi, 1), "log_stiffness"),
        (lambda: run(m, integ, x0, v0, log_k, torch.zeros(2), phi, 1), "kappa"),
        (lambda: run(m, integ, x0, v0, log_k, kappa, torch.zeros(2), 1), "friction_logit"),
        (lambda: run(m, integ, x0, v0, log_k, kappa, phi, -1), "n_frames"),
        (lambda: run(m, Integrator(substeps=0), x0, v0, log_k, kappa, phi, 1), "substeps"),
        (lambda: run(m, integ, x0.long(), v0, log_k, kappa, phi, 1), "float32 or float64"),
        (lambda: rollout(m, SpringParams(log_k, kappa, phi), SpringState(x0, v0), 1, "jax"), "integrator"),
        (lambda: SpringModel(x0, m.neighbors[:4], m.rest_length), "neighbors"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


def test_kernel_tables_built_once_and_shared_by_edited_models():
    """The frozen model keeps its kernel tables: a model with edited physics (another gravity, as
    `sgaus simulate` makes) shares them, and a model of other rest lengths has its own."""
    g = torch.Generator().manual_seed(3)
    model = build_spring_model(torch.rand(40, 3, generator=g, dtype=F64) * 0.3 + 0.05, 6)
    cpu = torch.device("cpu")
    assert model.kernel_topology(cpu) is model.kernel_topology(cpu)
    edited = model.with_physics(gravity=(0.0, -1.0, 0.0))
    assert edited.kernel_topology(cpu) is model.kernel_topology(cpu) and edited.gravity == (0.0, -1.0, 0.0)
    with pytest.raises(ValueError, match="not a physical constant"):
        model.with_physics(neighbors=model.neighbors)
    params = _params(model)
    integ = Integrator(substeps=8)
    run(model, integ, model.rest_positions, torch.zeros(3, dtype=F64), *params, n_frames=1)
    pulled = SpringModel(model.rest_positions, model.neighbors, model.rest_length * 0.9)  # every spring now pulls
    out = {b: run(pulled, integ, pulled.rest_positions, torch.zeros(3, dtype=F64), *params, n_frames=1, backend=b)[0]
           for b in ("taichi", "torch")}
    assert float((out["taichi"] - out["torch"]).abs().max()) < 1e-9
    assert float((out["taichi"][-1] - out["taichi"][0]).abs().max()) > 1e-4


def test_a_model_with_other_springs_builds_its_own_kernel_tables():
    # dataclasses.replace with other anchors and springs once kept the old model's tables: the
    # kernels then read the old reverse adjacency and rest lengths (past the end of smaller arrays)
    import dataclasses

    from taichi_sim.spring_model import nearest_springs

    g = torch.Generator().manual_seed(5)
    small = build_spring_model(torch.rand(20, 3, generator=g, dtype=F64) * 0.2 + 0.05, 6)
    integ = Integrator(substeps=40)
    run(small, integ, small.rest_positions, torch.zeros(3, dtype=F64), *_params(small), n_frames=1)  # tables built
    for x in (torch.rand(60, 3, generator=g, dtype=F64) * 0.3 + 0.05,  # more anchors
              small.rest_positions * torch.tensor([1.0, 1.3, 1.0], dtype=F64)):  # same topology, other lengths
        nbr, rest = nearest_springs(x, 6)
        edited = dataclasses.replace(small, rest_positions=x, neighbors=nbr, rest_length=rest)
        fresh = SpringModel(x, nbr, rest)
        stretched = x.clone()
        stretched[:, 1] *= 1.02  # every spring out of rest, so the rest lengths matter
        params = _params(edited)
        got = run(edited, integ, stretched, torch.zeros(3, dtype=F64), *params, n_frames=1)[0]
        want = run(fresh, integ, stretched, torch.zeros(3, dtype=F64), *params, n_frames=1)[0]
        assert torch.equal(got, want)
        assert edited.tables is not small.tables
    moved = small.translated(torch.tensor([0.0, 0.5, 0.0]))
    assert moved.tables is small.tables and torch.allclose(moved.rest_positions[:, 1], small.rest_positions[:, 1] + 0.5)


def test_coinciding_anchors_are_named():
    x0 = _lattice(2, 0.1)
    with pytest.raises(ValueError, match="anchors 3 and 8 coincide"):
        build_spring_model(torch.cat([x0, x0[3:4]]), 3)


@pytest.mark.parametrize("name, bad", [("log_stiffness", "nan"), ("kappa", "inf"), ("friction_logit", "-inf")])
def test_non_finite_parameters_are_named_not_retried(name, bad):
    m = build_spring_model(_lattice(2, 0.1), 3)
    log_k, kappa, phi = _params(m)
    values = {"log_stiffness": log_k, "kappa": kappa, "friction_logit": phi}
    values[name] = values[name].clone().fill_(float(bad))
    with pytest.raises(ValueError, match=f"{name} holds {bad}") as err:
        rollout_with_retry(m, SpringParams(**values), SpringState(m.rest_positions, torch.zeros(3, dtype=F64)), 2,
                           Integrator(substeps=10))
    assert not isinstance(err.value, SimulationUnstable)


@pytest.mark.parametrize("backend", ["taichi", "torch"])
def test_contact_offset_moves_the_collision_plane_not_the_ground(backend, tmp_path):
    """Anchors of a model with contact_offset d collide with the plane d below the ground point
    (in both twins); the ground point itself, which renders and edits use, stays where it was;
    an asset saves and reloads the offset, and an asset written before it existed collides at 0."""
    import json

    from conftest import make_asset
    from pipeline.asset import load_asset, save_asset

    x0 = _lattice(3, 0.05, origin=(0.0, 0.02, 0.0))
    plain = build_spring_model(x0, 12, n_c=12)
    sunk = plain.with_physics(contact_offset=0.015)
    assert sunk.ground_point == plain.ground_point and sunk.contact_point() == (0.0, -0.015, 0.0)
    lows = []
    for model in (plain, sunk):
        pos, _v = run(model, Integrator(frame_dt=0.02, substeps=60), x0, torch.zeros(27, 3, dtype=F64),
                      *_params(model, log_k=3.5), n_frames=15, backend=backend)
        lows.append(float(pos[-1][:, 1].min()))
    assert abs(lows[0]) < 2e-3 and abs(lows[1] + 0.015) < 2e-3, lows
    with pytest.raises(ValueError, match="contact_offset"):
        plain.with_physics(contact_offset=-0.01)

    from pipeline.data.gaussians import Gaussians

    pts = x0.float()
    g = Gaussians(means=pts, log_scales=torch.full((27,), -4.0), colors=torch.rand(27, 3),
                  opacity_logits=torch.zeros(27))
    asset = make_asset(pts, g, 12, 12, 40)
    asset = asset.with_physics(contact_offset=0.015)
    save_asset(tmp_path / "a", asset)
    assert load_asset(tmp_path / "a").model.contact_offset == pytest.approx(0.015)
    doc_path = next(p for p in (tmp_path / "a").glob("*.json") if "contact_offset" in p.read_text())
    doc = json.loads(doc_path.read_text())
    del doc["model"]["contact_offset"]
    doc_path.write_text(json.dumps(doc))
    assert load_asset(tmp_path / "a").model.contact_offset == 0.0


def test_flat_floor_lifts_each_anchor_by_its_height_above_the_lowest_up_to_the_offset(tmp_path):
    """contact_lift: zeros for the uniform floor; min(h, contact_offset) for the flat one, h along
    the ground's normal (a tilted normal here); none without an offset. The choice is checked, saved
    with an asset, and an asset written before it existed keeps the uniform floor."""
    import json

    from conftest import make_asset
    from pipeline.asset import load_asset, save_asset
    from pipeline.data.gaussians import Gaussians

    x0 = _lattice(3, 0.05, origin=(0.0, 0.02, 0.0))
    normal = torch.tensor([0.0, 0.8, 0.6], dtype=F64)
    model = build_spring_model(x0, 12, n_c=12, ground_normal=tuple(normal.tolist()), contact_offset=0.06)
    assert float(model.contact_lift(dtype=F64).abs().max()) == 0.0
    flat = model.with_physics(contact_floor="flat")
    h = x0 @ normal
    assert torch.allclose(flat.contact_lift(dtype=F64), (h - h.min()).clamp(max=0.06), atol=1e-12)
    assert 0 < int((flat.contact_lift(dtype=F64) == 0.06).sum()) < 27
    assert float(flat.with_physics(contact_offset=0.0).contact_lift().abs().max()) == 0.0
    with pytest.raises(SgausError, match="contact_floor must be one of uniform, flat"):
        model.with_physics(contact_floor="level")

    pts = x0.float()
    g = Gaussians(means=pts, log_scales=torch.full((27,), -4.0), colors=torch.rand(27, 3),
                  opacity_logits=torch.zeros(27))
    save_asset(tmp_path / "a", make_asset(pts, g, 12, 12, 40).with_physics(contact_offset=0.01, contact_floor="flat"))
    assert load_asset(tmp_path / "a").model.contact_floor == "flat"
    doc_path = next(p for p in (tmp_path / "a").glob("*.json") if "contact_floor" in p.read_text())
    doc = json.loads(doc_path.read_text())
    del doc["model"]["contact_floor"]
    doc_path.write_text(json.dumps(doc))
    assert load_asset(tmp_path / "a").model.contact_floor == "uniform"


@pytest.mark.parametrize("backend", ["taichi", "torch"])
def test_a_stiff_block_lands_flat_on_a_flat_floor_where_it_pivots_on_its_lowest_bumps(backend):
    """A stiff block whose underside has bumps a few mm deep on one side (as a reconstruction's
    unseen underside has), dropped flat: with the uniform floor it lands on the bumps first and
    turns; with the flat floor (offset deeper than the bumps) its underside meets the ground at
    once and it bounces without turning."""
    x0 = _lattice(5, 0.04, origin=(-0.08, 0.1, -0.08))
    bottom = x0[:, 1] < 0.1 + 1e-9
    bumps = bottom & (x0[:, 0] < -0.05) & (x0[:, 2] < 0.0)  # one corner's bottom anchors hang low
    x0[bumps, 1] -= 0.004
    base = build_spring_model(x0, 12, n_c=12, springs="mirrored", spring_stiffness="pair", friction_mode="per_time",
                              contact_offset=0.008)
    turned = {}
    for floor in ("uniform", "flat"):
        model = base.with_physics(contact_floor=floor)
        pos, _v = run(model, Integrator(frame_dt=0.02, substeps=200), x0, torch.zeros(125, 3, dtype=F64),
                      *_params(model, log_k=5.0, phi=3.0), n_frames=12, backend=backend)
        a, b = x0 - x0.mean(0), pos[-1] - pos[-1].mean(0)
        u, _s, vt = torch.linalg.svd(a.T @ b)
        up = (u @ vt).T @ torch.tensor([0.0, 1.0, 0.0], dtype=F64)  # the block's up after the best rotation
        turned[floor] = math.degrees(math.acos(min(1.0, float(up[1]))))
        assert float(pos[:, :, 1].mean(1).min()) < 0.15, "the block must reach the ground"
    assert turned["uniform"] > 8.0 and turned["flat"] < 0.2 * turned["uniform"], turned  # measured 16.7 and 1.3


@pytest.mark.parametrize("backend", ["taichi", "torch"])
@pytest.mark.parametrize("restitution", [0.1, 0.3, 0.8])
def test_penalty_ground_gives_back_its_restitution_and_holds_a_resting_object(backend, restitution):
    """Two anchors side by side (an unloaded spring) land flat at 1 m/s without gravity: they leave
    the ground at restitution x 1 m/s after about contact_time (the damped spring's half-period).
    A lattice dropped on it comes to rest on the plane, no deeper than its weight presses it."""
    pair = torch.tensor([[0.0, 0.001, 0.0], [0.05, 0.001, 0.0]], dtype=F64)
    model = build_spring_model(pair, 1, n_c=1, gravity=(0.0, 0.0, 0.0), contact="penalty", contact_time=0.004,
                               restitution=restitution)
    integ = Integrator(frame_dt=0.002, substeps=40)
    pos, v = run(model, integ, pair, torch.tensor([0.0, -1.0, 0.0], dtype=F64), *_params(model), n_frames=6,
                 backend=backend)
    assert float(pos[:, :, 1].min()) < -2e-4, "the anchors must press into the ground"
    assert torch.allclose(v[:, 1], torch.full((2,), restitution, dtype=F64), atol=0.03), (v[:, 1], restitution)
    x0 = _lattice(3, 0.05, origin=(0.0, 0.02, 0.0))
    cube = build_spring_model(x0, 12, n_c=12, contact="penalty", restitution=restitution, springs="mirrored")
    pos, v = run(cube, Integrator(frame_dt=0.02, substeps=60), x0, torch.zeros(27, 3, dtype=F64),
                 *_params(cube, log_k=3.5), n_frames=60, backend=backend)
    assert -1e-3 < float(pos[-1][:, 1].min()) < 0 and float(v.abs().max()) < 0.1  # it lands at 0.63 m/s


def test_penalty_restitution_is_the_exit_speed_of_a_pushing_damped_spring_and_is_inverted():
    """The closed form against a fine explicit integration of x'' = -x - 2 zeta x' (omega = 1),
    released where the push -x - 2 zeta x' (x the signed height, below 0) stops pushing, for under-,
    critically and overdamped contacts; damping_ratio inverts it."""
    from taichi_sim.spring_model import damping_ratio, penalty_restitution

    for zeta in (0.05, 0.3, 0.7071, 1.0, 1.7, 4.0):
        x, v, dt = 0.0, -1.0, 1e-5
        while True:
            v += (-x - 2 * zeta * v) * dt
            x += v * dt
            if x >= 0 or -x - 2 * zeta * v <= 0:
                break
        assert penalty_restitution(zeta) == pytest.approx(v, abs=2e-4), zeta
        assert damping_ratio(penalty_restitution(zeta)) == pytest.approx(zeta, rel=1e-5)
    assert penalty_restitution(0.0) == 1.0 and damping_ratio(1.0) == 0.0
    assert penalty_restitution(1.0) == pytest.approx(math.exp(-2), rel=1e-4)  # critical damping: exactly e^-2


def test_penalty_contact_shorter_than_six_substeps_is_unstable_and_retried():
    """A contact time the substeps cannot resolve reads as an unstable simulation (one line saying
    why) and the retry's extra substeps cure it; a restitution outside 0..1 is named at once."""
    x0 = _lattice(2, 0.05, origin=(0.0, 0.01, 0.0))
    model = build_spring_model(x0, 7, n_c=7, contact="penalty", contact_time=0.004)
    params = SpringParams(*_params(model))
    with pytest.raises(SimulationUnstable, match="contact time 0.004 s spans fewer than 6 substeps"):
        rollout(model, params, SpringState(x0, torch.zeros(3, dtype=F64)), 2, Integrator(frame_dt=0.03, substeps=40))
    traj = rollout_with_retry(model, params, SpringState(x0, torch.zeros(3, dtype=F64)), 2,
                              Integrator(frame_dt=0.03, substeps=20, retry_substeps=20))
    assert traj.substeps == 60
    with pytest.raises(SgausError, match="restitution must lie in 0..1"):
        model.with_physics(restitution=1.5)
    with pytest.raises(SimulationUnstable, match="damping .* takes more than all the speed"):
        rollout(model.with_physics(contact_time=0.01, restitution=0.001), params,
                SpringState(x0, torch.zeros(3, dtype=F64)), 1, Integrator(frame_dt=0.03, substeps=60))
    with pytest.raises(SgausError, match="contact must be one of projection, penalty"):
        model.with_physics(contact="soft")


def test_penalty_ground_is_saved_with_an_asset_and_old_assets_keep_the_projection(tmp_path):
    import json

    from conftest import make_asset
    from pipeline.asset import load_asset, save_asset
    from pipeline.data.gaussians import Gaussians

    pts = _lattice(3, 0.05, origin=(0.0, 0.02, 0.0)).float()
    g = Gaussians(means=pts, log_scales=torch.full((27,), -4.0), colors=torch.rand(27, 3),
                  opacity_logits=torch.zeros(27))
    asset = make_asset(pts, g, 12, 12, 40).with_physics(contact="penalty", contact_time=0.004, restitution=0.3)
    save_asset(tmp_path / "a", asset)
    loaded = load_asset(tmp_path / "a").model
    assert (loaded.contact, loaded.contact_time, loaded.restitution) == ("penalty", 0.004, pytest.approx(0.3))
    doc_path = next(p for p in (tmp_path / "a").glob("*.json") if "restitution" in p.read_text())
    doc = json.loads(doc_path.read_text())
    for key in ("contact", "contact_time", "restitution"):
        del doc["model"][key]
    doc_path.write_text(json.dumps(doc))
    assert load_asset(tmp_path / "a").model.contact == "projection"


@pytest.mark.parametrize("backend", ["taichi", "torch"])
def test_pair_stiffness_pulls_both_ends_of_a_spring_equally(backend):
    """Two anchors, each the other's only neighbour, stiffness 100x apart, stretched, weightless:
    with "pair" the spring pulls both ends equally (the centre of mass stays put); with each
    anchor's own k (the authors' form) the stiff end is pulled harder and the pair drifts."""
    rest = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]], dtype=torch.float64)
    start = torch.tensor([[0.0, 0.0, 0.0], [0.13, 0.0, 0.0]], dtype=torch.float64)
    params = SpringParams(torch.tensor([1.0, 3.0], dtype=torch.float64), torch.tensor(0.0), torch.tensor(0.0))
    simulate = rollout if backend == "taichi" else spring_torch.rollout
    drift = {}
    for mode in ("anchor", "pair"):
        model = build_spring_model(rest, 1, n_c=1, ground_point=None, gravity=(0.0, 0.0, 0.0), dead_zone=0.0,
                                   spring_stiffness=mode)
        traj = simulate(model, params, SpringState(start, torch.zeros(3)), 3, Integrator(frame_dt=0.01, substeps=50))
        moved = traj.positions[-1] - traj.positions[0]
        assert float(moved.abs().max()) > 1e-3, "the spring must move the anchors"
        drift[mode] = float(traj.positions[-1].mean(0).sub(traj.positions[0].mean(0)).norm())
    assert drift["pair"] < 1e-12
    assert drift["anchor"] > 1e-3


def test_pair_stiffness_is_the_anchor_form_when_the_field_is_uniform():
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(40, 3, generator=g, dtype=torch.float64) * 0.2 + torch.tensor([0.0, 0.01, 0.0], dtype=torch.float64)
    params = SpringParams(torch.full((40,), 2.5, dtype=torch.float64), torch.tensor(0.5), torch.tensor(-1.0))
    out = []
    for mode in ("anchor", "pair"):
        model = build_spring_model(pts, 8, n_c=3, spring_stiffness=mode)
        out.append(rollout(model, params, SpringState(pts, torch.tensor([0.3, -1.0, 0.0])), 4,
                           Integrator(frame_dt=0.03, substeps=20)).positions)
    assert float((out[0] - out[1]).abs().max()) < 1e-12


def test_spring_stiffness_is_checked_and_saved_with_an_asset():
    with pytest.raises(SgausError, match="spring_stiffness must be one of anchor, pair"):
        build_spring_model(torch.rand(5, 3), 2, spring_stiffness="mean")
    assert build_spring_model(torch.rand(5, 3), 2, spring_stiffness="pair").physics()["spring_stiffness"] == "pair"
    with pytest.raises(SgausError, match="springs must be one of directed, mirrored"):
        build_spring_model(torch.rand(5, 3), 2, springs="both")
    assert build_spring_model(torch.rand(5, 3), 2, springs="mirrored").physics()["springs"] == "mirrored"


def test_task_spread_hands_each_cpu_task_the_items_asked_for():
    """Taichi's CPU backend runs a parallel loop in blocks of CPU_LOOP_BLOCK iterations whatever
    loop_config says; task_spread stretches a loop so that each block holds the items asked for."""
    from taichi_sim.runtime import CPU_LOOP_BLOCK, task_spread

    assert task_spread(1) == CPU_LOOP_BLOCK  # one tile per task
    assert task_spread(64) == CPU_LOOP_BLOCK // 64  # 64 anchors per task
    assert task_spread(10 * CPU_LOOP_BLOCK) == 1  # never less than one index per item


def test_importing_taichi_sim_shortens_openmp_spinning_unless_the_user_chose():
    """PyTorch's OpenMP threads must not spin long after each op: they would take the cores from
    the Taichi kernel launched next. The default is set at import, before PyTorch loads."""
    import os
    import subprocess
    import sys

    code = "import taichi_sim, os; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "10000"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "7"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "7"
