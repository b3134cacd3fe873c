"""Evaluation metrics in the units of the paper's tables.

* Chamfer distance (CD): squared nearest-neighbour distances, the mean over each direction,
  the two directions averaged, reported in units of 1e3 mm^2 taking one scene unit as one metre
  (so 1 m^2 = 1e6 mm^2 = 1e3 table units).
* Earth mover's distance (EMD): an exact one-to-one assignment (Hungarian algorithm) between
  equal-sized random subsets of the two sets, reported as the mean Euclidean distance of the
  matched pairs in scene units (metres). The subset size and seed are fixed and stated.
* Orientation error: the angle (degrees) between the rotation that carries a predicted point set
  from its rest frame to a frame and the rotation that carries the ground truth's particles from
  their frame 0 to the same frame (each the best rotation of its own points, Kabsch), so a
  prediction that tips over where the truth stays level, or turns the other way, shows as an
  angle whatever the shapes' small differences.
PSNR and SSIM of images are render.losses.psnr and render.losses.ssim.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from taichi_sim.errors import SgausError

CD_UNITS_PER_M2 = 1e3  # 1 m^2 = 1e6 mm^2 = 1e3 x (1e3 mm^2)
EMD_SUBSET = 1024
EMD_SEED = 0


def _points(a) -> np.ndarray:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or len(a) == 0:
        raise SgausError(f"a point set must be a non-empty [N,3] array, got shape {a.shape}")
    return a


def chamfer_distance(pred, gt) -> float:
    """Squared-distance Chamfer distance between [N,3] and [M,3] point sets, in 1e3 mm^2."""
    p, g = _points(pred), _points(gt)
    d_pg, _ = cKDTree(g).query(p, k=1)
    d_gp, _ = cKDTree(p).query(g, k=1)
    return float(0.5 * (np.mean(d_pg**2) + np.mean(d_gp**2)) * CD_UNITS_PER_M2)


def earth_movers_distance(pred, gt, subset: int = EMD_SUBSET, seed: int = EMD_SEED) -> float:
    """Exact EMD (mean matched Euclidean distance, scene units) on equal random subsets."""
    p, g = _points(pred), _points(gt)
    n = min(subset, len(p), len(g))
    rng = np.random.default_rng(seed)
    p = p[rng.choice(len(p), n, replace=False)] if len(p) > n else p
    g = g[rng.choice(len(g), n, replace=False)] if len(g) > n else g
    cost = np.linalg.norm(p[:, None, :] - g[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def best_rotation(rest, points) -> np.ndarray:
    """The proper rotation R [3,3] that best carries ``rest`` [N,3] onto ``points`` [N,3] (the
    same points, in the same order) after both are centred: argmin sum |R (r - mean r) - (p - mean p)|^2
    (Kabsch, with the reflection excluded)."""
    r, p = _points(rest), _points(points)
    if r.shape != p.shape:
        raise SgausError(f"a rotation needs the same points at rest and moved, got shapes {r.shape} and {p.shape}")
    u, _, vt = np.linalg.svd((p - p.mean(0)).T @ (r - r.mean(0)))
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, d]) @ vt


def rotation_angle_deg(rotation) -> float:
    """The angle (degrees, 0..180) of a rotation matrix [3,3]."""
    r = np.asarray(rotation, dtype=np.float64)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])  # 2 sin(angle) x the axis
    # atan2 keeps small angles exact, where arccos of the trace loses half the digits
    return float(np.degrees(np.arctan2(0.5 * np.linalg.norm(axis), 0.5 * (np.trace(r) - 1.0))))


def orientation_error_deg(pred_rest, pred, gt_rest, gt) -> float:
    """The angle (degrees) between the prediction's rotation from ``pred_rest`` to ``pred`` and the
    ground truth's from ``gt_rest`` to ``gt`` (module docstring); the two sets need not match."""
    return rotation_angle_deg(best_rotation(pred_rest, pred) @ best_rotation(gt_rest, gt).T)
