"""`sgaus view`: anchors coloured by fitted stiffness (the report's colormap) and the ground grid
laid on the ground plane on the squares of the simulation videos; the mapping functions run
without viser, the GUI checkboxes with it."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import make_asset
from pipeline.asset import Asset
from pipeline.data.gaussians import Gaussians
from pipeline.report import stiffness_colors
from pipeline.simulate import Edits, ground_square
from pipeline.viewer import ANCHOR_COLOUR, anchor_colours, build_scene, ground_grid_pose, rotate
from render.backdrop import plane_frame

PURPLE, YELLOW = np.array([68, 1, 84]), np.array([253, 231, 37])  # viridis(0), viridis(1)


def two_halves() -> Asset:
    """27 anchors 5 cm apart 25 cm above the ground; log10 k = 2 on x < 0, 3 at x = 0, 4 on x > 0."""
    side = torch.linspace(-0.05, 0.05, 3)
    anchors = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    anchors[:, 1] += 0.25
    g = Gaussians(means=anchors.clone(), log_scales=torch.full((27,), math.log(0.015)),
                  colors=torch.full((27, 3), 0.5), opacity_logits=torch.full((27,), 3.0))
    asset = make_asset(anchors, g, k_neighbors=6, n_c=3, substeps=20, frames=4, n_b=1)
    return dataclasses.replace(asset, params=dataclasses.replace(asset.params,
                                                                 log_stiffness=3.0 + torch.sign(anchors[:, 0])))


# ------------------------------------------------------------------ no viser needed
def test_anchor_colours_follow_the_report_colormap():
    asset = two_halves()
    log_k = asset.params.log_stiffness.numpy()
    c = anchor_colours(log_k, by_stiffness=True)
    assert c.shape == (27, 3) and c.dtype == np.uint8
    x = asset.model.rest_positions[:, 0].numpy()
    assert (np.abs(c[x < 0].astype(int) - PURPLE).max(1) <= 1).all()
    assert (np.abs(c[x > 0].astype(int) - YELLOW).max(1) <= 1).all()
    assert np.array_equal(c, stiffness_colors(log_k))  # the very colours of the report's pictures
    plain = anchor_colours(log_k, by_stiffness=False)
    assert plain.shape == (27, 3) and (plain == np.array(ANCHOR_COLOUR, dtype=np.uint8)).all()
    # a fixed range (the fitted one): ten times stiffer everywhere saturates to yellow
    stiffer = anchor_colours(log_k + 1.0, by_stiffness=True, vmin=2.0, vmax=4.0)
    assert (np.abs(stiffer[x >= 0].astype(int) - YELLOW).max(1) <= 1).all()
    assert not np.array_equal(stiffer[x < 0], c[x < 0])
    with pytest.raises(ValueError, match="finite"):
        anchor_colours(np.array([np.nan]), by_stiffness=True)


def test_scene_carries_the_simulated_stiffness():
    asset = two_halves()
    scene = build_scene(asset, n_frames=2)
    assert np.allclose(scene.log_stiffness, asset.params.log_stiffness.numpy())
    scaled = build_scene(asset, n_frames=2, edits=Edits(stiffness_scale=10.0))
    assert np.allclose(scaled.log_stiffness, asset.params.log_stiffness.numpy() + 1.0)


def test_ground_grid_lies_on_the_plane_under_the_object_on_the_video_squares():
    asset = two_halves()
    square = ground_square(asset)
    assert square == pytest.approx(0.05)  # a quarter of the lattice's 17 cm diagonal, rounded to 1-2-5
    position, wxyz = ground_grid_pose((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), np.array([0.12, 0.25, -0.07]), square)
    p = np.array(position)
    assert p[1] == pytest.approx(0.0)  # on the plane
    assert np.allclose(p[[0, 2]], [0.1, -0.05])  # under the object, on a corner of the checker's squares
    # the grid's local axes are the checker's axes: its lines run along the squares' edges
    _n, e1, e2 = (v.numpy() for v in plane_frame((0.0, 1.0, 0.0)))
    assert np.allclose(rotate(wxyz, [1, 0, 0]), e1) and np.allclose(rotate(wxyz, [0, 1, 0]), e2)
    # a tilted ground: the grid is on that plane, its normal the ground's
    n = np.array([0.3, 0.9, -0.2]) / np.linalg.norm([0.3, 0.9, -0.2])
    point = np.array([0.0, -0.1, 0.0])
    position, wxyz = ground_grid_pose(point, n, np.array([0.2, 0.4, 0.1]), square)
    assert (np.array(position) - point) @ n == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(rotate(wxyz, [0, 0, 1]), n)
    below = np.array([0.2, 0.4, 0.1]) - ((np.array([0.2, 0.4, 0.1]) - point) @ n) * n
    assert np.linalg.norm(np.array(position) - below) <= square * math.sqrt(0.5) + 1e-12


# ------------------------------------------------------------------ viser
def test_viewer_checkboxes_colour_the_anchors_and_hide_the_ground():
    pytest.importorskip("viser", reason="viser is not installed (pip install 'sgaus[viewer]')")
    from pipeline.viewer import start_viewer

    asset = two_halves()
    viewer = start_viewer(asset, port=0, n_frames=3, log=lambda *_: None)
    try:
        x = asset.model.rest_positions[:, 0].numpy()
        colours = lambda: np.asarray(viewer.anchor_cloud.colors).reshape(-1, 3).astype(int)  # noqa: E731
        assert not viewer.colour_by_stiffness.value
        assert (colours() == ANCHOR_COLOUR).all()
        viewer.colour_by_stiffness.value = True  # runs the checkbox's callback
        c = colours()
        assert (np.abs(c[x < 0] - PURPLE).max(1) <= 1).all() and (np.abs(c[x > 0] - YELLOW).max(1) <= 1).all()
        assert "log10 k from 2.00" in viewer.info.content
        # re-simulating with a stiffer object keeps the fitted colour range: everything turns yellow-ish
        assert viewer.simulate(dataclasses.replace(viewer.read_controls(), stiffness_scale=100.0))
        assert (np.abs(colours() - YELLOW).max(1) <= 1).all()
        viewer.colour_by_stiffness.value = False
        assert (colours() == ANCHOR_COLOUR).all()

        assert viewer.ground_grid.visible and viewer.show_ground.value
        assert viewer.ground_grid.cell_size == pytest.approx(ground_square(asset))
        viewer.show_ground.value = False
        assert not viewer.ground_grid.visible
        viewer.show_ground.value = True
        assert viewer.ground_grid.visible
        assert np.allclose(viewer.ground_grid.position, (0.0, 0.0, 0.0), atol=1e-9)
        # no ground after an edit: no grid, whatever the box says; the ground back: the grid back
        assert viewer.simulate(dataclasses.replace(viewer.read_controls(), ground=False))
        assert not viewer.ground_grid.visible and viewer.show_ground.value
        assert viewer.simulate(dataclasses.replace(viewer.read_controls(), ground=True, ground_height=-0.05))
        assert viewer.ground_grid.visible
        assert viewer.ground_grid.position[1] == pytest.approx(-0.05)
    finally:
        viewer.stop()
