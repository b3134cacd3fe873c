"""Physical identification across materials: the global search finds a stiffness far from its
start, the dense field learns real heterogeneity from there, bad search settings and exploding
candidates are handled, and friction means the same at any substep count."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import cube_scene, render_video
from pipeline.fit import dynamic, global_search
from pipeline.fit.settings import make_settings
from taichi_sim.errors import SgausError
from taichi_sim.spring_model import build_spring_model
from taichi_sim.spring_params import SpringParams, friction_logit
from taichi_sim.spring_rollout import Integrator, SpringState, Trajectory, rollout

N_FRAMES = 10
V0 = torch.tensor([0.0, -1.0, 0.0])


def _search_settings(**changes):
    s = make_settings("tiny", overrides={"substeps": 40, "init_log_stiffness": 4.0,
                                         "init_friction_logit": friction_logit(0.5)})
    return dataclasses.replace(s.global_search_settings(), **changes)


def test_global_search_finds_a_stiffness_100x_from_its_start():
    model, binding, g, cams = cube_scene()
    n = model.n_anchors
    true = SpringParams(torch.full((n,), 2.0), torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    _pos, video = render_video(model, binding, g, cams, true, V0, N_FRAMES)
    settings = _search_settings(search_friction=False, search_kappa=False, cma_generations=4, cma_population=6)
    r = global_search.run(g, model, binding, V0, video, N_FRAMES, 0.03, settings, progress=False)
    found = float(r.params.log_stiffness[0])
    assert abs(found - 2.0) < 0.2, f"found log10 k = {found:.2f}, the video was made with 2.0 (start 4.0)"
    assert torch.equal(r.params.log_stiffness, r.params.log_stiffness[:1].expand(n))
    assert len(r.evaluations) == settings.grid_points + settings.offset_points + 4 * 6
    assert r.best_per_round == sorted(r.best_per_round, reverse=True)  # the best only improves
    # the video's anchors touch the plane itself: the contact offset found stays near 0
    top = settings.contact_offset_max * global_search.object_height(model)
    assert 0.0 <= r.contact_offset < 0.3 * top, f"contact offset {r.contact_offset:.4f} of at most {top:.4f}"


def test_global_search_finds_the_depth_of_the_unseen_underside():
    """A video whose anchors sink 2 cm into the ground (as the volume-sampled anchors of a real fit
    reach below the object's unseen underside): with the stiffness about known, the search finds
    that depth (the stiffness search itself is the test above)."""
    model, binding, g, cams = cube_scene()
    n = model.n_anchors
    true = SpringParams(torch.full((n,), 2.5), torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    _pos, video = render_video(model.with_physics(contact_offset=0.02), binding, g, cams, true, V0, N_FRAMES)
    settings = _search_settings(search_friction=False, search_kappa=False, log_k_range=(2.4, 2.6), grid_points=2,
                                cma_generations=3, cma_population=6, offset_points=5)
    r = global_search.run(g, model, binding, V0, video, N_FRAMES, 0.03, settings, progress=False)
    assert abs(r.contact_offset - 0.02) < 0.003, f"contact offset {r.contact_offset:.4f}, the video's 0.02"


def test_a_ground_declared_too_low_is_raised_by_a_negative_offset():
    """A video whose floor lies 2 cm above the declared one (a capture's floor estimated at rest
    lies low by the object's sag): searched down to -contact_offset_max, the offset comes out
    -2 cm, and the model it places has its ground plane raised by that, its offset 0. With the
    default bounds (0..max) no offset is ever negative."""
    model, binding, g, cams = cube_scene()
    n = model.n_anchors
    true = SpringParams(torch.full((n,), 2.5), torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    up = torch.tensor(model.unit_normal())
    raised = model.with_physics(ground_point=tuple((torch.tensor(model.ground_point) + 0.02 * up).tolist()))
    _pos, video = render_video(raised, binding, g, cams, true, V0, N_FRAMES)
    settings = _search_settings(search_friction=False, search_kappa=False, log_k_range=(2.4, 2.6), grid_points=2,
                                cma_generations=3, cma_population=6, offset_points=5, contact_offset_min=-0.25)
    r = global_search.run(g, model, binding, V0, video, N_FRAMES, 0.03, settings, progress=False)
    assert abs(r.contact_offset + 0.02) < 0.003, f"contact offset {r.contact_offset:.4f}, the video's -0.02"
    placed = global_search.placed(model, r.contact_offset)
    assert placed.contact_offset == 0.0
    assert torch.allclose(torch.tensor(placed.ground_point), torch.tensor(raised.ground_point), atol=0.003)
    assert global_search.placed(model, 0.01).ground_point == model.ground_point
    assert all(e["contact_offset"] >= 0 for e in global_search.run(
        g, model, binding, V0, video, N_FRAMES, 0.03, dataclasses.replace(settings, contact_offset_min=0.0,
                                                                            cma_generations=1),
        progress=False).evaluations)
    for bad in (0.3, -1.5, math.nan):  # above the largest offset (0.25), below -1, not a number
        with pytest.raises(SgausError, match="contact_offset_min must lie in -1..contact_offset_max"):
            dataclasses.replace(settings, contact_offset_min=bad).check()


def test_a_known_underside_depth_pins_or_bounds_the_contact_offset():
    """A user who knows how deep the anchors reach below the object's bottom gives it: equal bounds
    pin the offset (every candidate stands at that depth), a positive smallest one keeps the search
    at least that deep, though the video's true depth (2 cm) lies shallower."""
    model, binding, g, cams = cube_scene()
    n = model.n_anchors
    true = SpringParams(torch.full((n,), 2.5), torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    _pos, video = render_video(model.with_physics(contact_offset=0.02), binding, g, cams, true, V0, N_FRAMES)
    height = global_search.object_height(model)
    settings = _search_settings(search_friction=False, search_kappa=False, log_k_range=(2.4, 2.6), grid_points=2,
                                cma_generations=2, cma_population=4, offset_points=3)
    pinned = 0.03 / height
    r = global_search.run(g, model, binding, V0, video, N_FRAMES, 0.03,
                          dataclasses.replace(settings, contact_offset_min=pinned, contact_offset_max=pinned),
                          progress=False)
    assert r.contact_offset == pytest.approx(0.03)
    assert all(e["contact_offset"] == pytest.approx(0.03) for e in r.evaluations)
    assert len(r.evaluations) == 2 + 2 * 4  # no bracket of offsets
    r = global_search.run(g, model, binding, V0, video, N_FRAMES, 0.03,
                          dataclasses.replace(settings, contact_offset_min=pinned, contact_offset_max=0.25),
                          progress=False)
    assert all(e["contact_offset"] >= 0.03 - 1e-9 for e in r.evaluations)
    assert 0.03 - 1e-9 <= r.contact_offset < 0.035, f"contact offset {r.contact_offset:.4f}, bounded at 0.03"


def test_global_search_finds_the_restitution_of_a_penalty_ground():
    """A cube that lands on a penalty ground keeping 30 % of its landing speed: with the stiffness
    about known, the search (starting at 0.5) finds that restitution from how high it bounces.
    With the projection ground the restitution is no dimension of the search."""
    model, binding, g, cams = cube_scene()
    model = model.with_physics(contact="penalty")
    n = model.n_anchors
    true = SpringParams(torch.full((n,), 2.5), torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    _pos, video = render_video(model.with_physics(restitution=0.3), binding, g, cams, true, V0 * 2, N_FRAMES,
                               substeps=60)
    settings = _search_settings(search_friction=False, search_kappa=False, log_k_range=(2.49, 2.51), grid_points=2,
                                cma_generations=8, cma_population=6, contact_offset_max=0.0, substeps=60)
    r = global_search.run(g, model, binding, V0 * 2, video, N_FRAMES, 0.03, settings, progress=False)
    assert abs(r.restitution - 0.3) < 0.08, f"restitution {r.restitution:.3f}, the video's 0.3 (start 0.5)"
    assert global_search.placed(model, 0.0, r.restitution).restitution == r.restitution
    plain = global_search.run(g, model.with_physics(contact="projection"), binding, V0 * 2, video, N_FRAMES, 0.03,
                              dataclasses.replace(settings, cma_generations=1), progress=False)
    assert plain.restitution is None and {e["restitution"] for e in plain.evaluations} == {0.5}


def test_global_search_finds_the_damping_of_the_springs():
    """A cube whose springs are damped ten times harder than the authors' zeta0 (1.0 against 0.1)
    and whose soft vector is off, so only the damping keeps its wobble from ringing: with the
    stiffness about known, the search (starting at 0.1) finds that damping within a third of a
    decade, and the model it places carries it. Without search_zeta0 it is no dimension of the
    search."""
    model, binding, g, cams = cube_scene()
    n = model.n_anchors
    true = SpringParams(torch.full((n,), 2.5), torch.tensor(-40.0), torch.tensor(friction_logit(0.5)))
    _pos, video = render_video(model.with_physics(zeta0=1.0), binding, g, cams, true, V0 * 2, N_FRAMES, substeps=60)
    settings = _search_settings(search_friction=False, search_kappa=False, log_k_range=(2.49, 2.51), grid_points=2,
                                cma_generations=4, cma_population=6, contact_offset_max=0.0, substeps=60,
                                search_zeta0=True, physics=dataclasses.replace(_search_settings().physics,
                                                                               init_kappa=-40.0))
    r = global_search.run(g, model, binding, V0 * 2, video, N_FRAMES, 0.03, settings, progress=False)
    assert r.zeta0 is not None and abs(math.log10(r.zeta0)) < 0.34, \
        f"zeta0 {r.zeta0:.3f}, the video's 1.0 (start 0.1)"
    assert global_search.placed(model, 0.0, None, r.zeta0).zeta0 == r.zeta0
    assert len(r.evaluations) == 2 + settings.zeta0_points + 4 * 6
    assert ("4 spring dampings", 4) in settings.rounds()
    plain = global_search.run(g, model, binding, V0 * 2, video, N_FRAMES, 0.03,
                              dataclasses.replace(settings, search_zeta0=False, cma_generations=1), progress=False)
    assert plain.zeta0 is None and {e["zeta0"] for e in plain.evaluations} == {model.zeta0}
    with pytest.raises(SgausError, match="zeta0_points must be >= 2"):
        dataclasses.replace(settings, zeta0_points=1).check()
    with pytest.raises(SgausError, match="zeta0 must be a finite number"):
        global_search.placed(model, 0.0, None, float("nan"))


def test_stiff_candidates_get_more_substeps_instead_of_infinity():
    """At 10 substeps per frame log10 k = 4.5 blows up; the search retries it with more substeps
    (up to max_substeps), scores it, and hands its substep count to the dense stage."""
    model, binding, g, cams = cube_scene(n_side=3, k_neighbors=8, size=24)
    n = model.n_anchors
    _pos, video = render_video(model, binding, g, cams, SpringParams.uniform(n, 4.5), V0, 4,
                               substeps=120)
    settings = _search_settings(log_k_range=(1.5, 4.5), grid_points=3, cma_generations=0, substeps=10,
                                max_substeps=200, contact_offset_max=0.0)
    r = global_search.run(g, model, binding, V0, video, 4, 0.03, settings, progress=False)
    stiff = [e for e in r.evaluations if e["log_k"] == 4.5]
    assert stiff and math.isfinite(stiff[0]["loss"]) and stiff[0]["substeps"] > 10
    assert float(r.params.log_stiffness[0]) == 4.5 and r.substeps == stiff[0]["substeps"]


@pytest.mark.parametrize("spring_stiffness", ["anchor", "pair"])
def test_heterogeneous_halves_come_out_ordered(spring_stiffness):
    """Two halves 10x apart: from the global value the dense field puts the stiffer half higher,
    with either form of a spring's stiffness (truth and fit alike)."""
    model, binding, g, cams = cube_scene()
    model = model.with_physics(spring_stiffness=spring_stiffness)
    x = model.rest_positions[:, 0]
    true_log_k = torch.where(x > 0, 2.5, 1.5)
    true = SpringParams(true_log_k, torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    _pos, video = render_video(model, binding, g, cams, true, V0, N_FRAMES)
    s = make_settings("tiny", overrides={"substeps": 40, "iterations": 30, "cameras_per_frame": 4,
                                         "lr_friction": 0.0, "lr_kappa": 0.0, "stiffness_regions": 8,
                                         "init_friction_logit": friction_logit(0.5)})
    start = SpringParams(torch.full((model.n_anchors,), 2.0), torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    r = dynamic.run(g, model, binding, V0, video, N_FRAMES, 0.03, s.dynamic(), progress=False, start=start)
    fitted = r.params.log_stiffness
    stiff, soft = float(fitted[x > 0].mean()), float(fitted[x < 0].mean())
    assert stiff > soft + 0.1, f"stiff half {stiff:.2f}, soft half {soft:.2f}"


def test_global_regions_order_heterogeneous_halves():
    """The global search's last, zero-order round over a few smooth regions already puts the stiffer
    half of a two-material cube higher; global.json keeps the per-anchor values."""
    model, binding, g, cams = cube_scene()
    x = model.rest_positions[:, 0]
    true = SpringParams(torch.where(x > 0, 2.5, 1.5), torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    _pos, video = render_video(model, binding, g, cams, true, V0, N_FRAMES)
    settings = _search_settings(search_friction=False, search_kappa=False, log_k_range=(1.9, 2.1), grid_points=2,
                                cma_generations=0, contact_offset_max=0.0, regions=4, region_generations=4,
                                cma_population=8)
    r = global_search.run(g, model, binding, V0, video, N_FRAMES, 0.03, settings, progress=False)
    fitted = r.params.log_stiffness
    stiff, soft = float(fitted[x > 0].mean()), float(fitted[x < 0].mean())
    assert len(r.regions) == 4 and stiff > soft + 0.15, f"stiff half {stiff:.2f}, soft half {soft:.2f}"
    assert abs(float(fitted.mean()) - 2.0) < 0.11  # the regions move around the global value
    assert r.loss < min(e["loss"] for e in r.evaluations if "regions" not in e)


def test_bad_search_ranges_are_one_clear_error():
    model, binding, g, cams = cube_scene(n_side=3, k_neighbors=8, size=24)
    n = model.n_anchors
    _pos, video = render_video(model, binding, g, cams, SpringParams.uniform(n, 2.0), V0, 4)
    for rng in [(3.0, 3.0), (5.0, 1.0), (float("nan"), 2.0), (-20.0, 5.0)]:
        with pytest.raises(SgausError, match="log_k_range"):
            global_search.run(g, model, binding, V0, video, 4, 0.03, _search_settings(log_k_range=rng), False)
    # and the fit's settings name a bad range before any stage runs
    for bad, match in [({"global_log_k_min": 6.0, "global_log_k_max": 2.0}, "log_k_range"),
                       ({"global_contact_offset_min": 0.3}, "contact_offset_min must lie in -1..contact_offset_max")]:
        with pytest.raises(SgausError, match=match):
            make_settings("tiny", overrides=bad)
    make_settings("tiny", overrides={"global_contact_offset_min": 0.3, "global_search": False})  # not searched


def test_exploding_candidates_are_skipped_and_all_exploding_is_an_error(monkeypatch):
    calls = []
    real = global_search.rollout
    monkeypatch.setattr(global_search, "rollout", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, binding, g, cams = cube_scene(n_side=3, k_neighbors=8, size=24)
    n = model.n_anchors
    _pos, video = render_video(model, binding, g, cams, SpringParams.uniform(n, 2.0), V0, 4)
    settings = _search_settings(log_k_range=(1.0, 9.5), grid_points=9, cma_generations=2, cma_population=4,
                                substeps=4, max_substeps=4)
    r = global_search.run(g, model, binding, V0, video, 4, 0.03, settings, progress=False)
    losses = [e["loss"] for e in r.evaluations]
    assert any(math.isinf(v) for v in losses), "the test needs candidates that blow up"
    assert math.isfinite(r.loss) and r.loss == min(losses)
    assert float(r.params.log_stiffness[0]) < 6.0
    # a stiffness that blew up at max_substeps makes every stiffer candidate infinite without a rollout
    first = min(e["log_k"] for e in r.evaluations if e["hopeless"])
    assert all(e["hopeless"] and math.isinf(e["loss"]) for e in r.evaluations if e["log_k"] >= first)
    # ... and each candidate below the lowest stiffness that had blown up when it was scored ran one
    # rollout (the energy check can stop a candidate a little below one that blew up earlier)
    lowest, rolled = math.inf, 0
    for e in r.evaluations:
        if e["log_k"] < lowest:
            rolled += 1
            if e["hopeless"]:
                lowest = e["log_k"]
    assert len(calls) == rolled
    with pytest.raises(SgausError, match="blew up for every stiffness"):
        global_search.run(g, model, binding, V0, video, 4, 0.03,
                          dataclasses.replace(settings, log_k_range=(8.5, 9.5), grid_points=3), progress=False)


def test_the_chosen_candidate_must_simulate_the_whole_video_not_only_the_fitted_frames():
    """The best-scored candidate is stiff: fine over the fitted frames (a free fall before the
    landing) but blowing up after the landing at the most substeps allowed; the search takes the
    next candidate that lasts the video's length, and says which it passed over. Without frames
    beyond the fitted ones it keeps the best."""
    from types import SimpleNamespace

    model, _binding, _g, _cams = cube_scene(n_side=3, k_neighbors=8, size=24)
    settings = _search_settings(substeps=40, max_substeps=40)
    stiff, soft = 6.0, 2.0
    entry = lambda log_k, loss: {"log_k": log_k, "friction_logit": 0.0, "kappa": 0.0,  # noqa: E731
                                 "contact_offset": 0.0, "restitution": 0.5, "loss": loss, "substeps": 40}
    score = SimpleNamespace(evaluations=[entry(soft, 0.2), entry(stiff, 0.1), entry(4.0, math.inf), entry(stiff, 0.1)],
                            n_fit=2)  # CMA-ES may propose the same point twice: it is tried once
    integrator = Integrator(frame_dt=0.03, substeps=40, max_substeps=40)
    params = SpringParams(torch.full((model.n_anchors,), stiff), torch.tensor(0.0), torch.tensor(0.0))
    rollout(model, params, SpringState(model.rest_positions, V0), 1, integrator)  # the fitted frames: fine
    with pytest.raises(global_search.SimulationUnstable):
        rollout(model, params, SpringState(model.rest_positions, V0), 9, integrator)
    chosen, substeps, passed_over = global_search.stable_choice(score, model, V0, 10, 0.03, settings)
    assert chosen["log_k"] == soft and substeps == 40
    assert [e["log_k"] for e in passed_over] == [stiff]
    chosen, _, passed_over = global_search.stable_choice(score, model, V0, 2, 0.03, settings)
    assert chosen["log_k"] == stiff and passed_over == []


def _slide(substeps: int, mode: str, contact: str = "projection") -> float:
    """Tangential speed left of a sheet sliding on the ground at 1 m/s after 0.15 s (friction 0.998 per
    0.3 ms of contact: about 0.37 m/s left)."""
    side = torch.linspace(0.0, 0.2, 3, dtype=torch.float64)
    gx, gz = torch.meshgrid(side, side, indexing="ij")
    sheet = torch.stack([gx.reshape(-1), torch.zeros(9, dtype=torch.float64), gz.reshape(-1)], -1)
    model = build_spring_model(sheet, 4, friction_mode=mode, contact=contact)
    params = SpringParams(torch.full((9,), 3.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                          torch.tensor(friction_logit(0.998), dtype=torch.float64))
    traj = rollout(model, params, SpringState(sheet, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)), 5,
                   Integrator(frame_dt=0.03, substeps=substeps))
    return float(traj.v_last[:, 0].mean())


@pytest.mark.parametrize("contact", ["projection", "penalty"])
def test_friction_per_unit_of_time_does_not_depend_on_the_substeps(contact):
    slow, fast = _slide(50, "per_time", contact), _slide(400, "per_time", contact)
    assert abs(slow / fast - 1) < 0.02, (slow, fast)
    assert 0.2 < fast < 0.5  # friction acted, and did not stop the sheet
    # the authors' form (a factor per substep) depends on them strongly
    assert _slide(50, "per_substep", contact) > 1.5 * _slide(400, "per_substep", contact)


def test_global_search_resumed_from_a_checkpoint_ends_where_it_would_have(tmp_path):
    """Killed after any candidate (here: midway through the region round), the search replays the
    scored candidates from its checkpoint, with their contact offsets, dampings, region values and
    substeps, and continues to exactly the uninterrupted result."""
    from pipeline.fit.checkpoint import Checkpoint, CheckpointPolicy

    model, binding, g, cams = cube_scene(n_side=3, k_neighbors=8, size=24)
    x = model.rest_positions[:, 0]
    true = SpringParams(torch.where(x > 0, 3.0, 2.0), torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    _pos, video = render_video(model, binding, g, cams, true, V0, 5)
    settings = _search_settings(log_k_range=(1.0, 5.0), grid_points=4, offset_points=2, cma_generations=1,
                                cma_population=4, regions=2, region_generations=2, substeps=10, max_substeps=60,
                                search_zeta0=True, zeta0_points=2)
    path = tmp_path / "global.checkpoint"
    every = Checkpoint(path, "global", "key", CheckpointPolicy(interval_s=1e9, every=1))
    full = global_search.run(g, model, binding, V0, video, 5, 0.03, settings, False, checkpoint=every)
    assert any("regions" in e for e in full.evaluations) and any(e["substeps"] > 10 for e in full.evaluations
                                                                 if e["substeps"])
    doc = torch.load(path, weights_only=True)
    cut = len(full.evaluations) - 3  # three region candidates left to score
    doc["state"]["evaluations"] = doc["state"]["evaluations"][:cut]
    torch.save(doc, path)
    resumed = global_search.run(g, model, binding, V0, video, 5, 0.03, settings, False,
                                checkpoint=Checkpoint(path, "global", "key", resume=True))
    assert torch.equal(resumed.params.log_stiffness, full.params.log_stiffness)
    assert resumed.loss == full.loss and resumed.regions == full.regions
    assert resumed.contact_offset == full.contact_offset and resumed.substeps == full.substeps
    assert resumed.zeta0 == full.zeta0 and len({e["zeta0"] for e in full.evaluations}) > 2
    assert [e["loss"] for e in resumed.evaluations] == [e["loss"] for e in full.evaluations]


def test_default_springs_leave_a_free_object_in_place_and_the_paper_preset_keeps_the_authors_form():
    """A weightless blob, no ground, squeezed, with halves 1 decade apart and every anchor linked
    to every other with soft-vector weight 1 (so each spring has its mirror): under the default
    settings' springs its centre of mass stays put whatever the field; under the paper preset's
    (the authors' form, each anchor pulled with its own k) the field pushes it."""
    g = torch.Generator().manual_seed(5)
    rest = torch.rand(20, 3, generator=g, dtype=torch.float64) * 0.2
    start = rest * 0.9  # compressed: every spring pushes its ends apart
    log_k = 2.0 + (rest[:, 0] > rest[:, 0].median()).double()
    params = SpringParams(log_k, torch.tensor(0.0), torch.tensor(0.0))
    drift = {}
    for preset in ("fast", "paper"):
        physics = make_settings(preset).physics()
        n = len(rest) - 1
        model = build_spring_model(rest, n, n_c=n, ground_point=None, gravity=(0.0, 0.0, 0.0), dead_zone=0.0,
                                   spring_stiffness=physics.spring_stiffness, springs=physics.springs)
        traj = rollout(model, params, SpringState(start, torch.zeros(3)), 3, Integrator(frame_dt=0.01, substeps=50))
        assert float((traj.positions[-1] - traj.positions[0]).abs().max()) > 1e-3, "the springs must move the blob"
        drift[preset] = float((traj.positions[-1].mean(0) - traj.positions[0].mean(0)).norm())
    assert drift["fast"] < 1e-10
    assert drift["paper"] > 1e-3
    assert make_settings("fast").global_regions == 0 and make_settings("paper").global_regions == 4
    assert make_settings("fast").springs == "mirrored" and make_settings("paper").springs == "directed"


def test_a_step_whose_gradient_is_not_finite_is_skipped(monkeypatch, capsys):
    """A rollout whose gradient comes back NaN (as a stiff model's can in float32) leaves the
    parameters where they were instead of turning them into NaN."""
    model, binding, g, cams = cube_scene(n_side=3, k_neighbors=8, size=24)
    n = model.n_anchors
    _pos, video = render_video(model, binding, g, cams, SpringParams.uniform(n, 2.0), V0, 4)

    class Poison(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return torch.full_like(grad, math.nan)

    real = dynamic.rollout
    poison = {"on": True}

    def rollout_poisoned(*args, **kwargs):
        t = real(*args, **kwargs)
        return Trajectory(Poison.apply(t.positions), t.v_last, t.substeps) if poison["on"] else t

    monkeypatch.setattr(dynamic, "rollout", rollout_poisoned)
    s = make_settings("tiny", overrides={"substeps": 20, "iterations": 3}).dynamic()
    start = SpringParams(torch.full((n,), 2.5), torch.tensor(0.3), torch.tensor(-0.5))
    r = dynamic.run(g, model, binding, V0, video, 4, 0.03, s, progress=False, start=start)
    assert torch.equal(r.params.log_stiffness, start.log_stiffness)
    assert float(r.params.kappa) == pytest.approx(0.3) and float(r.params.friction_logit) == pytest.approx(-0.5)
    assert "3 step(s) skipped, whose gradient was not finite" in capsys.readouterr().out
    poison["on"] = False  # the same fit with finite gradients moves
    moved = dynamic.run(g, model, binding, V0, video, 4, 0.03, s, progress=False, start=start)
    assert not torch.equal(moved.params.log_stiffness, start.log_stiffness)
