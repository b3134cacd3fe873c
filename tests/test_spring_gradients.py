"""Gradients of the spring-mass rollout: the Taichi kernels against the PyTorch twin, and both
against f64 central finite differences, for all five learnable inputs."""
import dataclasses

import pytest
import torch

from taichi_sim import spring_torch
from taichi_sim.spring_model import build_spring_model
from taichi_sim.spring_params import SpringParams
from taichi_sim.spring_rollout import Integrator, SpringState, rollout

F64 = torch.float64
ROLLOUTS = {"taichi": rollout, "torch": spring_torch.rollout}


def run(model, integ, x0, v0, log_k, kappa, phi, n_frames, backend="taichi"):
    """(positions, v_last) of a rollout from (x0, v0) with the given parameters."""
    traj = ROLLOUTS[backend](model, SpringParams(log_k, kappa, phi), SpringState(x0, v0), n_frames, integ)
    return traj.positions, traj.v_last


def _setup(points, k_neighbors, frame_dt, substeps, **physics):
    return build_spring_model(points, k_neighbors, **physics), Integrator(frame_dt=frame_dt, substeps=substeps)


def _blob(n, seed, lift=0.02):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=F64) * torch.tensor([0.3, 0.2, 0.3], dtype=F64) + \
        torch.tensor([0.0, lift, 0.0], dtype=F64)


def _inputs(model, seed, v0=(0.4, -1.5, 0.2), log_k=2.3, kappa=0.4, phi=-0.3, jitter=0.01):
    g = torch.Generator().manual_seed(seed)
    n = model.n_anchors
    x0 = model.rest_positions + jitter * torch.randn(n, 3, generator=g, dtype=F64)  # away from the dead zone
    lk = log_k + 0.2 * torch.randn(n, generator=g, dtype=F64)
    return [x0, torch.tensor(v0, dtype=F64), lk, torch.tensor(kappa, dtype=F64), torch.tensor(phi, dtype=F64)]


def _loss_fn(model, integ, n_frames, backend, seed=7, **kw):
    g = torch.Generator().manual_seed(seed)
    wp = torch.randn(n_frames + 1, model.n_anchors, 3, generator=g, dtype=F64)
    wv = torch.randn(model.n_anchors, 3, generator=g, dtype=F64)

    def loss(*ins):
        pos, v = run(model, dataclasses.replace(integ, **kw), *ins, n_frames=n_frames, backend=backend)
        return (pos * wp).sum() + (v * wv).sum()

    return loss


def _grads(loss, ins):
    ins = [t.clone().requires_grad_(True) for t in ins]
    value = loss(*ins)
    return value.detach(), torch.autograd.grad(value, ins, allow_unused=True, materialize_grads=True)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("force_law,spring_stiffness,springs", [
    ("smooth", "anchor", "directed"), ("paper", "anchor", "directed"), ("smooth", "pair", "directed"),
    ("smooth", "pair", "mirrored"), ("paper", "anchor", "mirrored")])
def test_taichi_matches_torch_twin_with_ground_contact(force_law, spring_stiffness, springs):
    model, integ = _setup(_blob(40, 0), 8, 0.03, 20, n_c=3, force_law=force_law, spring_stiffness=spring_stiffness,
                          springs=springs)
    ins = _inputs(model, 1)
    out = {}
    for backend in ("taichi", "torch"):
        pos, v = run(model, integ, *ins, n_frames=3, backend=backend)
        value, grads = _grads(_loss_fn(model, integ, 3, backend), ins)
        out[backend] = (pos, v, grads)
    pos_t, v_t, g_t = out["taichi"]
    pos_r, v_r, g_r = out["torch"]
    assert (pos_r[-1][:, 1] <= 1e-12).sum() >= 5, "the test needs anchors in contact with the ground"
    assert _rel(pos_t, pos_r) < 1e-6 and _rel(v_t, v_r) < 1e-6
    for name, a, b in zip(("x0", "v0", "log_stiffness", "kappa", "friction_logit"), g_t, g_r):
        assert a.shape == b.shape, name
        assert float(b.abs().max()) > 0, f"{name}: the torch gradient is zero, the test would prove nothing"
        assert _rel(a, b) < 1e-6, f"{name}: taichi and torch gradients differ ({_rel(a, b):.2e})"


# The finite-difference tests use dead_zone=0: the dead zone makes the force jump by k * 1e-6 when a
# spring passes through its rest length, which a finite difference of step h can straddle.
def _fd_check(model, integ, ins, n_frames, backend="taichi", h=1e-6, tol=1e-4):
    loss = _loss_fn(model, integ, n_frames, backend)
    _value, grads = _grads(loss, ins)
    g = torch.Generator().manual_seed(11)
    names = ("x0", "v0", "log_stiffness", "kappa", "friction_logit")
    for i, name in enumerate(names):
        direction = torch.randn(ins[i].shape, generator=g, dtype=F64)
        plus = [t.clone() for t in ins]
        minus = [t.clone() for t in ins]
        plus[i] = plus[i] + h * direction
        minus[i] = minus[i] - h * direction
        with torch.no_grad():
            fd = (loss(*plus) - loss(*minus)) / (2 * h)
        ad = (grads[i] * direction).sum()
        err = abs(float(ad - fd)) / max(abs(float(fd)), 1e-8)
        assert err < tol, f"{name}: autodiff {float(ad):.8g} vs finite differences {float(fd):.8g} (rel {err:.1e})"
        yield name, float(fd)


@pytest.mark.parametrize("spring_stiffness,springs", [("anchor", "directed"), ("pair", "directed"),
                                                      ("pair", "mirrored")])
def test_finite_differences_with_ground_contact(spring_stiffness, springs):
    model, integ = _setup(_blob(30, 2, lift=0.01), 10, 0.03, 15, n_c=4, dead_zone=0.0,
                          spring_stiffness=spring_stiffness, springs=springs)
    ins = _inputs(model, 3, v0=(0.5, -2.0, 0.3))
    pos, _ = run(model, integ, *ins, n_frames=2)
    assert (pos[-1][:, 1] <= 1e-12).sum() >= 3, "the test needs anchors in contact with the ground"
    fds = dict(_fd_check(model, integ, ins, 2))
    assert abs(fds["friction_logit"]) > 1e-6, "friction must matter in this scene"


def _twins_agree_with_finite_differences(model, integ, ins, n_frames):
    """The Taichi kernels' values and hand-written gradients against the twin's autograd (to 1e-9),
    and against f64 finite differences, with friction mattering; the two twins' positions."""
    out = {}
    for backend in ("taichi", "torch"):
        pos, v = run(model, integ, *ins, n_frames=n_frames, backend=backend)
        out[backend] = (pos, v, _grads(_loss_fn(model, integ, n_frames, backend), ins)[1])
    pos_t, v_t, g_t = out["taichi"]
    pos_r, v_r, g_r = out["torch"]
    assert _rel(pos_t, pos_r) < 1e-9 and _rel(v_t, v_r) < 1e-9
    for name, a, b in zip(("x0", "v0", "log_stiffness", "kappa", "friction_logit"), g_t, g_r):
        assert float(b.abs().max()) > 0, f"{name}: the torch gradient is zero, the test would prove nothing"
        assert _rel(a, b) < 1e-9, f"{name}: taichi and torch gradients differ ({_rel(a, b):.2e})"
    fds = dict(_fd_check(model, integ, ins, n_frames, h=1e-7))
    assert abs(fds["friction_logit"]) > 1e-6, "friction must matter in this scene"
    return pos_t, pos_r


@pytest.mark.parametrize("springs", ["directed", "mirrored"])
def test_penalty_ground_taichi_matches_twin_and_finite_differences(springs):
    """The penalty ground (SpringModel.contact "penalty"): the kernels' values and hand-written
    gradients against the twin's autograd, and against f64 finite differences, on a blob that lands
    (anchors pushed by the ground's spring, and friction acting)."""
    model, integ = _setup(_blob(30, 2, lift=0.01), 10, 0.01, 15, n_c=4, dead_zone=0.0, springs=springs,
                          spring_stiffness="pair", contact="penalty", contact_time=0.005, restitution=0.3)
    ins = _inputs(model, 3, v0=(0.5, -2.0, 0.3))
    pos_t, pos_r = _twins_agree_with_finite_differences(model, integ, ins, 8)
    assert (pos_r[1:, :, 1] < 0).any(0).sum() >= 5, "the test needs anchors pushed by the ground"
    projection = run(model.with_physics(contact="projection"), integ, *ins, n_frames=8)[0]
    assert float((projection - pos_t).abs().max()) > 1e-3, "the penalty ground must differ from the projection"


@pytest.mark.parametrize("contact", ["projection", "penalty"])
def test_flat_floor_taichi_matches_twin_and_finite_differences(contact):
    """The flat floor (SpringModel.contact_floor "flat": the anchors within the contact offset of the
    lowest one meet the ground together): the kernels' values and gradients against the twin's, and
    against f64 finite differences, on a blob that lands with several anchors lifted."""
    model, integ = _setup(_blob(30, 2, lift=0.01), 10, 0.01, 15, n_c=4, dead_zone=0.0, springs="mirrored",
                          spring_stiffness="pair", contact=contact, contact_offset=0.02, contact_floor="flat")
    lift = model.contact_lift(dtype=F64)
    assert int(((lift > 0) & (lift < 0.02)).sum()) >= 3, "the test needs anchors lifted by less than the offset"
    ins = _inputs(model, 3, v0=(0.5, -2.0, 0.3))
    pos_t, _pos_r = _twins_agree_with_finite_differences(model, integ, ins, 8)
    uniform = run(model.with_physics(contact_floor="uniform"), integ, *ins, n_frames=8)[0]
    assert float((uniform - pos_t).abs().max()) > 1e-3, "the flat floor must differ from the uniform one"


def test_finite_differences_without_ground():
    model, integ = _setup(_blob(30, 4), 10, 0.03, 15, n_c=4, ground_point=None, dead_zone=0.0)
    ins = _inputs(model, 5)
    fds = dict(_fd_check(model, integ, ins, 2))
    assert fds["friction_logit"] == 0.0  # no ground, no friction


@pytest.mark.parametrize("spring_stiffness,springs", [("anchor", "directed"), ("pair", "directed"),
                                                      ("pair", "mirrored")])
def test_finite_differences_large_k_strong_forces(spring_stiffness, springs):
    """Many springs per anchor, all stretched and moving: the case where Taichi's automatic
    differentiation of a vector summed in a non-static inner loop goes wrong (Taichi issues 8356, 8027).
    With "pair", both mutual and one-way springs carry the stiffness of both their ends."""
    model, integ = _setup(_blob(60, 6), 40, 0.02, 10, n_c=8, ground_point=None, dead_zone=0.0,
                          spring_stiffness=spring_stiffness, springs=springs)
    ins = _inputs(model, 7, log_k=2.8, kappa=1.0, jitter=0.03)
    ins[1] = torch.randn(60, 3, generator=torch.Generator().manual_seed(8), dtype=F64)  # per-anchor v0
    # "pair" makes this rollout about 8x more sensitive to x0: a step of 1e-6 leaves a truncation
    # error of 2e-3 in the central difference (the torch twin's autograd agrees with the kernels to 1e-13)
    list(_fd_check(model, integ, ins, 2, h=1e-6 if spring_stiffness == "anchor" else 1e-7))


def test_paper_force_law_finite_differences():
    model, integ = _setup(_blob(24, 9), 8, 0.03, 10, n_c=2, force_law="paper", p_k=0.5, dead_zone=0.0)
    list(_fd_check(model, integ, _inputs(model, 10, log_k=3.0), 2))


def test_checkpoint_off_gives_the_same_gradients():
    model, integ = _setup(_blob(30, 12), 8, 0.03, 10, n_c=3)
    ins = _inputs(model, 13)
    _, g_on = _grads(_loss_fn(model, integ, 3, "taichi", checkpoint=True), ins)
    _, g_off = _grads(_loss_fn(model, integ, 3, "taichi", checkpoint=False), ins)
    for a, b in zip(g_on, g_off):
        assert torch.equal(a, b)


def test_recomputed_frames_give_the_same_gradients():
    """checkpoint=True keeps the substeps of the frames that fit in record_mb and recomputes the
    others: no frame kept, one frame of three kept (a frame here is 24,240 bytes) and all kept agree."""
    model, integ = _setup(_blob(30, 12), 8, 0.03, 10, n_c=3)
    ins = _inputs(model, 13)
    _, g_all = _grads(_loss_fn(model, integ, 3, "taichi", checkpoint=False), ins)
    for record_mb in (0.0, 30000 / 2**20):
        _, g = _grads(_loss_fn(model, integ, 3, "taichi", checkpoint=True, record_mb=record_mb), ins)
        for a, b in zip(g, g_all):
            assert torch.equal(a, b), record_mb
    with pytest.raises(ValueError, match="record_mb"):
        run(model, dataclasses.replace(integ, record_mb=-1), *ins, n_frames=1)


def test_per_frame_truncation_matches_twin():
    """The authors' mode: one frame at a time from a detached state, backward after each frame."""
    model, integ = _setup(_blob(30, 14), 8, 0.03, 12, n_c=3)
    ins = _inputs(model, 15)
    target = model.rest_positions + torch.tensor([0.0, -0.01, 0.0], dtype=F64)
    results = {}
    for backend in ("taichi", "torch"):
        log_k = ins[2].clone().requires_grad_(True)
        kappa = ins[3].clone().requires_grad_(True)
        phi = ins[4].clone().requires_grad_(True)
        x, v = ins[0], ins[1].expand(30, 3)
        grads = []
        for _frame in range(3):
            pos, v = run(model, integ, x.detach(), v.detach(), log_k, kappa, phi, n_frames=1, backend=backend)
            ((pos[1] - target) ** 2).sum().backward()
            grads.append([t.grad.clone() for t in (log_k, kappa, phi)])
            for t in (log_k, kappa, phi):
                t.grad = None
            x = pos[1]
        results[backend] = (x.detach(), grads)
    full, _ = run(model, integ, *ins, n_frames=3)
    assert _rel(results["taichi"][0], full[3]) < 1e-12
    for ga, gb in zip(results["taichi"][1], results["torch"][1]):
        for a, b in zip(ga, gb):
            assert _rel(a, b) < 1e-6
