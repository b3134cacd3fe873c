"""Anchor layouts (pipeline/fit/geometry.py): scattered points thinned by farthest-point
sampling, or a lattice whose layers lie parallel to the ground."""
from __future__ import annotations

import pytest
import torch

from conftest import SyntheticVideo, cube_scene
from pipeline.fit.geometry import inside_visual_hull, sample_anchors
from taichi_sim.errors import SgausError


@pytest.fixture(scope="module")
def cube():
    _model, _binding, g, cams = cube_scene(size=64)
    with torch.no_grad():
        rgb, alpha = g.render_with_alpha(cams)
    return g, SyntheticVideo(cams, [(rgb, alpha)])


def _layers(points: torch.Tensor, up: torch.Tensor, tol: float = 1e-5) -> list[int]:
    """Sizes of the groups of points at one height along ``up``, lowest first."""
    h, _ = torch.sort(points.double() @ up.double())
    sizes, start = [], 0
    for i in range(1, len(h) + 1):
        if i == len(h) or h[i] - h[start] > tol:
            sizes.append(i - start)
            start = i
    return sizes


@pytest.mark.parametrize("up", [(0.0, 1.0, 0.0), (0.0, 1.0, 0.25)])
def test_lattice_anchors_lie_in_layers_parallel_to_the_ground(cube, up):
    g, frames = cube
    n = torch.tensor(up) / torch.tensor(up).norm()
    a = sample_anchors(g, frames, 120, seed=0, layout="lattice", up=up)
    assert a.shape == (120, 3)
    assert bool(inside_visual_hull(a, frames.alpha(0), frames.cameras).all())
    layers = _layers(a, n)
    # the lowest layer is flat and holds many anchors, not one: the object lands on all of them at once
    assert layers[0] >= 9, layers
    # and every anchor sits on one of a few layers, one lattice spacing apart
    assert len(layers) <= 10 and sum(layers) == 120
    d = torch.cdist(a.double(), a.double()) + torch.eye(120, dtype=torch.float64)
    nearest = d.min(1).values
    assert float(nearest.max() - nearest.min()) < 1e-4 * float(nearest.median()) + 1e-6


def test_scattered_anchors_do_not_lie_in_layers(cube):
    # the default layout, for contrast: points jittered through the hull and the Gaussian centres
    g, frames = cube
    a = sample_anchors(g, frames, 120, seed=0)
    assert a.shape == (120, 3)
    assert _layers(a, torch.tensor([0.0, 1.0, 0.0]))[0] < 9


def test_lattice_layout_names_bad_requests(cube):
    g, frames = cube
    with pytest.raises(SgausError, match="anchor layout"):
        sample_anchors(g, frames, 50, layout="hexagonal")
    with pytest.raises(SgausError, match="ask for fewer anchors"):
        sample_anchors(g, frames, 2_000_000, layout="lattice")


def test_anchor_layout_is_a_fit_setting_that_keys_the_anchors_stage():
    from pipeline.fit.settings import make_settings

    fps, lattice = make_settings("tiny"), make_settings("tiny", overrides={"anchor_layout": "lattice"})
    assert fps.anchors().layout == "fps" and lattice.anchors().layout == "lattice"
    assert fps.anchors() != lattice.anchors()  # the stage key hashes these settings
    with pytest.raises(SgausError, match="anchor_layout must be one of fps, lattice"):
        make_settings("tiny", overrides={"anchor_layout": "grid"})
