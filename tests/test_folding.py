"""Folding: the share of a spring-mass object's local tetrahedra inverted, and the global
search's penalty on candidates that fold."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import cube_scene, render_video
from pipeline.fit import global_search
from pipeline.fit.settings import make_settings
from taichi_sim.errors import SgausError
from taichi_sim.folding import folded_fraction, local_tetrahedra, signed_volumes
from taichi_sim.spring_model import nearest_springs
from taichi_sim.spring_params import SpringParams, friction_logit
from taichi_sim.spring_rollout import Integrator, SpringState, rollout

V0 = torch.tensor([0.0, -1.0, 0.0])


def _cloud(n: int = 300, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=gen, dtype=torch.float64) * torch.tensor([0.3, 0.1, 0.2], dtype=torch.float64)
    nb, _rest = nearest_springs(x, 16)
    return x, local_tetrahedra(x, nb)


def test_rest_any_rotation_and_a_squash_are_unfolded_and_a_mirror_image_is_all_folded():
    x, tets = _cloud()
    assert tets.shape == (len(x), 4) and torch.equal(tets[:, 0], torch.arange(len(x)))
    assert bool((signed_volumes(x, tets).abs() > 0).all())  # no degenerate tetrahedron was chosen
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    q = q * torch.sign(torch.linalg.det(q))  # a proper rotation
    centre = x.mean(0)
    rotated = (x - centre) @ q.T + torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    assert float(folded_fraction(x, x, tets)) == 0.0
    assert float(folded_fraction(rotated, x, tets)) == 0.0
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert float(folded_fraction(mirrored, x, tets)) == 1.0
    squash = lambda s: x * torch.tensor([1.0, s, 1.0], dtype=torch.float64)  # noqa: E731
    assert float(folded_fraction(squash(0.5), x, tets)) == 0.0  # half the height: an elastic squash
    assert float(folded_fraction(squash(0.01), x, tets)) == 0.0  # crushed, but not through itself
    assert float(folded_fraction(squash(-0.5), x, tets)) == 1.0  # pushed through itself
    frames = torch.stack([x, rotated, mirrored])
    assert folded_fraction(frames, x, tets).tolist() == [0.0, 0.0, 1.0]


def test_one_anchor_pushed_through_its_neighbours_folds_only_what_it_belongs_to():
    x, tets = _cloud()
    i = 7
    a, b, c, d = (x[j] for j in tets[i])
    face = (b + c + d) / 3
    moved = x.clone()
    moved[i] = face + (face - a)  # through the opposite face: its own tetrahedron inverts
    share = float(folded_fraction(moved, x, tets))
    touched = int((tets == i).any(1).sum())
    assert 1 / len(x) <= share <= touched / len(x)
    ratio = signed_volumes(moved, tets) / signed_volumes(x, tets)
    assert float(ratio[i]) < 0
    with pytest.raises(SgausError, match="do not match"):
        folded_fraction(moved[:-1], x, tets)
    with pytest.raises(SgausError, match="at least 3 springs"):
        local_tetrahedra(x, nearest_springs(x, 2)[0])


def test_springs_cannot_tell_a_folded_object_from_one_at_rest():
    """Why folding needs its own measure: the mirror image of the rest anchors has every spring at
    its rest length, so the spring-mass model leaves it where it is, entirely inside out."""
    model, _binding, _g, _cams = cube_scene()
    free = model.with_physics(gravity=(0.0, 0.0, 0.0), ground_point=None)
    rest = free.rest_positions
    mirrored = rest * torch.tensor([-1.0, 1.0, 1.0], dtype=rest.dtype)
    params = SpringParams(torch.full((free.n_anchors,), 2.0), torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    with torch.no_grad():
        pos = rollout(free, params, SpringState(mirrored, torch.zeros(3, dtype=rest.dtype)), 5,
                      Integrator(frame_dt=0.03, substeps=40)).positions
    assert float((pos - mirrored).abs().max()) < 1e-9
    tets = local_tetrahedra(rest, free.neighbors)
    assert folded_fraction(pos, rest, tets).tolist() == [1.0] * 6


def test_the_global_search_adds_the_folded_share_beyond_the_tolerance_to_a_candidates_loss():
    model, binding, g, cams = cube_scene()
    n_frames = 10
    true = SpringParams(torch.full((model.n_anchors,), 2.5), torch.tensor(0.0), torch.tensor(friction_logit(0.5)))
    _pos, video = render_video(model, binding, g, cams, true, V0, n_frames)
    base = make_settings("tiny", overrides={"substeps": 40}).global_search_settings()

    def score(log_k, **changes):
        settings = dataclasses.replace(base, **changes)
        scorer = global_search._Scorer(g, model, binding, V0, video, n_frames, 0.03, settings)
        loss = scorer(log_k, friction_logit(0.5), 0.0, 0.0, 0.5)
        return loss, scorer.evaluations[-1]["folded"]

    off, none = score(2.0, fold_penalty=0.0)
    on, folded = score(2.0, fold_penalty=2.0, fold_tolerance=0.0)
    assert none is None and folded > 0.0  # the soft candidate inverts a few tetrahedra on landing
    assert on == pytest.approx(off + 2.0 * folded, rel=1e-9) and on > off
    within, _ = score(2.0, fold_penalty=2.0, fold_tolerance=folded)  # tolerated: scored as before
    assert within == off
    # a stiffer candidate does not fold and is scored as before
    plain, _ = score(3.0, fold_penalty=0.0)
    kept, unfolded = score(3.0, fold_penalty=1.0)
    assert unfolded == 0.0 and kept == plain
    assert math.isfinite(on)


def test_bad_fold_settings_are_named():
    for changes in [{"global_fold_penalty": -1.0}, {"global_fold_tolerance": 1.0}, {"global_fold_tolerance": -0.1}]:
        with pytest.raises(SgausError, match="global_fold"):
            make_settings("tiny", overrides=changes)
    base = make_settings("tiny").global_search_settings()
    for changes in [{"fold_penalty": float("nan")}, {"fold_tolerance": 2.0}]:
        with pytest.raises(SgausError, match="fold_"):
            dataclasses.replace(base, **changes).check()
