import numpy as np
import pytest
import torch

from pipeline.metrics import chamfer_distance, earth_movers_distance
from render.losses import psnr, ssim


def _cloud(n=800, seed=0):
    # points on a 0.5 m lattice-free random set, spread far wider than the 1 cm test shift
    return np.random.default_rng(seed).uniform(-0.5, 0.5, size=(n, 3))


def test_identical_sets_have_zero_distances():
    pts = _cloud()
    assert chamfer_distance(pts, pts) == 0.0
    assert earth_movers_distance(pts, pts) == 0.0


def test_shift_by_one_centimetre_has_known_values():
    # a grid with 10 cm spacing: every point's nearest neighbour after a 1 cm shift is its own copy
    g = np.stack(np.meshgrid(*[np.arange(6) * 0.1] * 3, indexing="ij"), -1).reshape(-1, 3)
    shifted = g + np.array([0.01, 0.0, 0.0])
    # squared distance 1e-4 m^2 = 100 mm^2 = 0.1 x (1e3 mm^2), in both directions
    assert chamfer_distance(g, shifted) == pytest.approx(0.1, rel=1e-9)
    # any matching of a translated set has a mean distance >= the translation; identity attains it
    assert earth_movers_distance(g, shifted) == pytest.approx(0.01, rel=1e-9)


def test_chamfer_is_symmetric_and_grows_with_distance():
    a, b = _cloud(seed=1), _cloud(seed=2)
    assert chamfer_distance(a, b) == pytest.approx(chamfer_distance(b, a))
    assert chamfer_distance(a, b + 0.1) > chamfer_distance(a, b)


def test_emd_uses_equal_subsets_and_is_deterministic():
    a, b = _cloud(3000, seed=3), _cloud(1500, seed=4)
    assert earth_movers_distance(a, b, subset=256) == earth_movers_distance(a, b, subset=256)


def test_image_metrics_of_identical_images():
    img = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    assert psnr(img, img) == float("inf")
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    noisy = (img + 0.1 * torch.randn(img.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 10 < psnr(noisy, img) < 30
    assert ssim(noisy, img) < 0.99


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[N,3\]"):
        chamfer_distance(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(8, 8, 3), torch.zeros(8, 8, 3))


def _rotation(axis, degrees):
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def test_orientation_error_measures_the_turn_between_prediction_and_truth():
    from pipeline.metrics import best_rotation, orientation_error_deg, rotation_angle_deg

    pred0, gt0 = _cloud(300, seed=5), _cloud(500, seed=6)  # different point sets, no correspondence
    tip = _rotation([1, 0, 0], 30)
    # the best rotation is recovered exactly, whatever the translation
    assert np.allclose(best_rotation(pred0, pred0 @ tip.T + [0.3, -1.0, 2.0]), tip, atol=1e-9)
    assert rotation_angle_deg(tip) == pytest.approx(30.0)
    # both turn the same way: no error; only the prediction tips: its angle
    yaw = _rotation([0, 1, 0], 50)
    assert orientation_error_deg(pred0, pred0 @ yaw.T, gt0, gt0 @ yaw.T + 0.1) == pytest.approx(0.0, abs=1e-6)
    assert orientation_error_deg(pred0, pred0 @ (tip @ yaw).T, gt0, gt0 @ yaw.T) == pytest.approx(30.0)
    # a mirror image is not a rotation: the best proper one is taken
    mirrored = pred0 * [1, 1, -1]
    assert np.linalg.det(best_rotation(pred0, mirrored)) == pytest.approx(1.0)
    # a squash to 0.8 of the height, no turn, reads as under a degree (a random cloud is not
    # symmetric, so Kabsch sees a little turn in a stretch), far below a tip
    assert orientation_error_deg(pred0, pred0 * [1, 0.8, 1], gt0, gt0) < 1.0
    with pytest.raises(ValueError, match="same points"):
        best_rotation(pred0, pred0[:10])
