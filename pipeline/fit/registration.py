"""Registration (paper Sec. 5.2, Fig. 3): the similarity that maps the static capture's Gaussians
into the dynamic cameras' frame at frame 0, fitted on the dynamic views' masks.

p_dynamic = s_r R_r p_static + t_r, with the rotation as a continuous 6D vector r_r (two columns
made orthonormal by Gram-Schmidt, Zhou et al. 2019) and the scale as log s_r; every Gaussian's
scale is multiplied by s_r too. The loss compares the rendered alpha of the (white) Gaussians with
the masks: (1 - lambda) L1 + lambda D-SSIM + lambda_center x the mask-centre loss (the distance
between the alpha-weighted centres of the rendered and the recorded silhouettes, in image widths).

No per-object numbers are needed: the initial guess is found automatically.

1. The object's centre in the dynamic frame: the point nearest the rays through the centres of
   the frame-0 masks (least squares over the views).
2. Rotation hypotheses: the 24 proper alignments of the static Gaussians' principal axes with the
   principal axes of the dynamic masks' visual hull, and ``random_hypotheses`` random rotations.
3. For each, the scale that makes the rendered silhouettes as spread as the masks and the
   translation that triangulates the rendered silhouettes' centres onto the masks' (two rounds),
   scored by the loss at a low resolution.
4. Around the best ``refine_top``: a local search over rotations about the frame's axes by
   16, 8, 4, 2 and 1 degrees (scale and translation refitted for each; a candidate is kept when it
   lowers the loss; silhouettes of three views leave the rotation a weak gradient, a search is
   what crosses their plateaus); then Adam on all seven numbers at the working resolution with
   every Gaussian, keeping the best parameters seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.data.cameras import Cameras
from pipeline.data.gaussians import Gaussians
from taichi_sim.errors import SgausError


@dataclass(frozen=True)
class RegistrationSettings:
    """iterations: Adam steps of the final refinement (all the Gaussians, the working resolution);
    refine_top: hypotheses searched locally; random_hypotheses: random rotations tried besides the
    24 principal-axis alignments; lambda_dssim, lambda_center: loss weights (the mask-centre loss in
    image widths); lr: Adam's rate for the 6D rotation and log scale in the final refinement (the
    translation's is lr times the object's size); coarse_side: longest image side when scoring
    hypotheses (twice that for the local search); coarse_gaussians: the Gaussians kept while
    scoring and searching (a random subset, scales grown to cover the same surface); seed."""

    iterations: int = 100
    refine_top: int = 3
    random_hypotheses: int = 48
    lambda_dssim: float = 0.2
    lambda_center: float = 1.0
    lr: float = 0.003
    coarse_side: int = 64
    coarse_gaussians: int = 1500
    seed: int = 0


@dataclass
class Similarity:
    """p -> scale * rotation @ p + translation."""

    scale: float
    rotation: np.ndarray  # [3,3]
    translation: np.ndarray  # [3]

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        R = torch.as_tensor(self.rotation, dtype=points.dtype)
        t = torch.as_tensor(self.translation, dtype=points.dtype)
        return self.scale * points @ R.T + t

    def gaussians(self, g: Gaussians) -> Gaussians:
        """``g`` mapped: centres moved, scales multiplied by the similarity's scale."""
        return Gaussians(self.apply(g.means.detach()), g.log_scales.detach() + math.log(self.scale),
                         g.colors.detach().clone(), g.opacity_logits.detach().clone())

    def to_json(self) -> dict:
        return {"scale": float(self.scale), "rotation": np.asarray(self.rotation).tolist(),
                "translation": np.asarray(self.translation).tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "Similarity":
        return cls(float(d["scale"]), np.asarray(d["rotation"], dtype=np.float64),
                   np.asarray(d["translation"], dtype=np.float64))


@dataclass
class Registration:
    similarity: Similarity
    initial: Similarity  # the automatic initial guess the refinement started from
    loss: float
    losses: list
    hypotheses: list = field(default_factory=list)  # [{"index", "score", "refined"}]


def rotation_from_6d(r6: torch.Tensor) -> torch.Tensor:
    """[3,3] rotation whose first two columns are the Gram-Schmidt orthonormalisation of r6's halves."""
    a, b = r6[:3], r6[3:]
    x = a / a.norm().clamp_min(1e-12)
    b = b - (x @ b) * x
    y = b / b.norm().clamp_min(1e-12)
    z = torch.linalg.cross(x, y)
    return torch.stack([x, y, z], dim=1)


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    c = (np.trace(np.asarray(Ra).T @ np.asarray(Rb)) - 1) / 2
    return math.degrees(math.acos(float(np.clip(c, -1.0, 1.0))))


def mask_centres(alpha: torch.Tensor) -> torch.Tensor:
    """Alpha-weighted centres [C,2] of [C,H,W,1] silhouettes, in image widths (x) and heights (y)."""
    C, H, W, _ = alpha.shape
    a = alpha[..., 0]
    ys = (torch.arange(H, dtype=a.dtype) + 0.5) / H
    xs = (torch.arange(W, dtype=a.dtype) + 0.5) / W
    total = a.sum((1, 2)).clamp_min(1e-6)
    return torch.stack([(a * xs).sum((1, 2)) / total, (a * ys[:, None]).sum((1, 2)) / total], -1)


def mask_loss(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float, lambda_center: float) -> torch.Tensor:
    """(1 - lambda) L1 + lambda D-SSIM + lambda_center x centre distance, of alphas [C,H,W,1]."""
    from render import l1_dssim_loss

    loss = l1_dssim_loss(pred.expand(*pred.shape[:3], 3), target.expand(*target.shape[:3], 3), lambda_dssim)
    if lambda_center:
        loss = loss + lambda_center * (mask_centres(pred) - mask_centres(target)).norm(dim=-1).mean()
    return loss


def subsample(g: Gaussians, n: int, seed: int = 0) -> Gaussians:
    """At most ``n`` of the Gaussians (a random subset of the opaque ones), their scales grown by
    sqrt(N / n) so that they still cover the surface."""
    keep = torch.nonzero(g.opacities().detach() > 0.05)[:, 0]
    if len(keep) <= n:
        return g.subset(keep) if len(keep) else g
    pick = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))[:n]]
    out = g.subset(pick)
    out.log_scales = out.log_scales + 0.5 * math.log(len(keep) / n)
    return out


def _render_alpha(g: Gaussians, cams: Cameras, scale, R, t) -> torch.Tensor:
    from render import rasterization

    means = scale * g.means @ R.T + t
    white = torch.ones_like(g.means)
    _rgb, alpha, _d = rasterization(means, g.scales() * scale, g.opacities(), white, cams.viewmats, cams.Ks,
                                    cams.width, cams.height)
    return alpha


def _rays_point(cams: Cameras, masks: torch.Tensor) -> np.ndarray:
    """The point nearest (least squares) to the rays through the masks' centres."""
    centres = mask_centres(masks).double().numpy() * np.array([cams.width, cams.height])
    A, b = np.zeros((3, 3)), np.zeros(3)
    for c in range(len(cams)):
        V = cams.viewmats[c].double().numpy()
        K = cams.Ks[c].double().numpy()
        origin = -V[:3, :3].T @ V[:3, 3]
        d = V[:3, :3].T @ np.linalg.solve(K, np.array([centres[c, 0], centres[c, 1], 1.0]))
        d /= np.linalg.norm(d)
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ origin
    return np.linalg.solve(A, b)


def _principal_axes(points: np.ndarray) -> np.ndarray:
    x = points - points.mean(0)
    _w, v = np.linalg.eigh(x.T @ x / len(x))
    return v[:, ::-1]  # columns: major .. minor


def _hull_points(cams: Cameras, masks: torch.Tensor, centre: np.ndarray, radius: float) -> np.ndarray:
    from pipeline.fit.geometry import grid_points, inside_visual_hull

    lo, hi = torch.tensor(centre - radius), torch.tensor(centre + radius)
    grid = grid_points(lo, hi, 2 * radius / 40).float()
    return grid[inside_visual_hull(grid, masks, cams)].double().numpy()


def _spread(alpha: torch.Tensor) -> torch.Tensor:
    """Alpha-weighted RMS pixel distance from the silhouette's centre, per view [C]."""
    C, H, W, _ = alpha.shape
    a = alpha[..., 0].double()
    ys, xs = torch.meshgrid(torch.arange(H, dtype=a.dtype), torch.arange(W, dtype=a.dtype), indexing="ij")
    total = a.sum((1, 2)).clamp_min(1e-9)
    cx, cy = (a * xs).sum((1, 2)) / total, (a * ys).sum((1, 2)) / total
    var = (a * ((xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2)).sum((1, 2)) / total
    return var.sqrt()


def _fit_scale_translation(g: Gaussians, cams: Cameras, masks: torch.Tensor, R: np.ndarray, s: float,
                           t: np.ndarray, centre: np.ndarray, rounds: int = 2) -> tuple[float, np.ndarray]:
    """Scale and translation for the rotation R: the rendered silhouettes' centres triangulated onto
    the masks' (translation) and their spreads matched (scale, about the static ``centre``)."""
    Rt = torch.tensor(R, dtype=torch.float32)
    target_point, target_spread = _rays_point(cams, masks), _spread(masks)
    for _ in range(rounds):
        alpha = _render_alpha(g, cams, s, Rt, torch.tensor(t, dtype=torch.float32))
        seen = alpha.sum((1, 2, 3)) > 1
        if int(seen.sum()) < 2:
            break
        ratio = float((target_spread[seen] / _spread(alpha)[seen].clamp_min(1e-6)).median())
        t = t + (target_point - _rays_point(cams[torch.nonzero(seen)[:, 0].tolist()], alpha[seen]))
        mapped = s * R @ centre + t
        s = s * float(np.clip(ratio, 0.5, 2.0))
        t = mapped - s * R @ centre
    return s, t


def _score(g: Gaussians, cams: Cameras, masks: torch.Tensor, sim: Similarity, settings) -> float:
    alpha = _render_alpha(g, cams, sim.scale, torch.tensor(sim.rotation, dtype=torch.float32),
                          torch.tensor(sim.translation, dtype=torch.float32))
    return float(mask_loss(alpha, masks, settings.lambda_dssim, settings.lambda_center))


def _at_side(cams: Cameras, masks: torch.Tensor, side: int):
    low = cams.scaled(min(1.0, side / max(cams.width, cams.height)))
    if (low.width, low.height) == (cams.width, cams.height):
        return cams, masks
    m = torch.nn.functional.interpolate(masks.permute(0, 3, 1, 2), size=(low.height, low.width), mode="area")
    return low, m.permute(0, 2, 3, 1)


def initial_hypotheses(g: Gaussians, cams: Cameras, masks: torch.Tensor, settings: RegistrationSettings):
    """[(score, Similarity)] sorted best first (see the module docstring, steps 1-3)."""
    if float(masks.sum()) < 1:
        raise SgausError("registration: the dynamic views' frame-0 masks are empty (no object in frame 0)")
    pts = g.means.detach().double().numpy()
    c_static = pts.mean(0)
    T = _rays_point(cams, masks)
    dists = np.linalg.norm(cams.centers().double().numpy() - T, axis=1)
    Ks = cams.Ks.double().numpy()
    size_guess = float(np.median(4 * _spread(masks).numpy() * dists / Ks[:, 0, 0]))
    hull = _hull_points(cams, masks, T, 1.5 * size_guess)
    E_dyn = _principal_axes(hull) if len(hull) > 10 else np.eye(3)
    E_st = _principal_axes(pts)
    rotations = []
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1), (-1, -1, -1), (-1, 1, 1), (1, -1, 1),
                      (1, 1, -1)):
            R = E_dyn @ (np.eye(3)[:, list(perm)] * np.array(signs)) @ E_st.T
            if np.linalg.det(R) > 0:
                rotations.append(R)
    from scipy.spatial.transform import Rotation

    rotations += list(Rotation.random(settings.random_hypotheses, random_state=settings.seed).as_matrix())
    low, low_masks = _at_side(cams, masks, settings.coarse_side)
    static_size = float(np.linalg.norm(pts.std(0))) * 2
    out = []
    with torch.no_grad():
        for R in rotations:
            s = size_guess / max(static_size, 1e-12)
            s, t = _fit_scale_translation(g, low, low_masks, R, s, T - s * R @ c_static, c_static)
            sim = Similarity(s, R, t)
            out.append((_score(g, low, low_masks, sim, settings), sim))
    out.sort(key=lambda x: x[0])
    return out


def local_search(g: Gaussians, cams: Cameras, masks: torch.Tensor, start: Similarity, settings,
                 steps_deg=(16.0, 8.0, 4.0, 2.0, 1.0)) -> tuple[Similarity, float]:
    """Rotations about the dynamic frame's axes by +-step around the best so far, each with its
    scale and translation refitted, kept when they lower the loss; the step halves when none does."""
    from scipy.spatial.transform import Rotation

    c_static = g.means.detach().double().numpy().mean(0)
    best, best_score = start, _score(g, cams, masks, start, settings)
    with torch.no_grad():
        for step in steps_deg:
            for _ in range(4):
                improved = False
                for axis in np.concatenate([np.eye(3), -np.eye(3)]):
                    R = Rotation.from_rotvec(np.radians(step) * axis).as_matrix() @ best.rotation
                    centre = best.scale * best.rotation @ c_static + best.translation
                    s, t = _fit_scale_translation(g, cams, masks, R, best.scale, centre - best.scale * R @ c_static,
                                                  c_static, rounds=1)
                    cand = Similarity(s, R, t)
                    score = _score(g, cams, masks, cand, settings)
                    if score < best_score - 1e-6:
                        best, best_score, improved = cand, score, True
                if not improved:
                    break
    return best, best_score


def _refine(g: Gaussians, cams: Cameras, masks: torch.Tensor, start: Similarity, iterations: int,
            settings: RegistrationSettings, size: float, progress: bool, desc: str):
    r6 = torch.tensor(np.concatenate([start.rotation[:, 0], start.rotation[:, 1]]), dtype=torch.float32,
                      requires_grad=True)
    log_s = torch.tensor(math.log(start.scale), dtype=torch.float32, requires_grad=True)
    t = torch.tensor(start.translation, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([{"params": [r6, log_s], "lr": settings.lr}, {"params": [t], "lr": settings.lr * size}])
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.1 ** (1.0 / max(iterations - 1, 1)))
    gd = Gaussians(*(x.detach() for x in g.tensors()))
    losses = []
    best = (math.inf, start)
    for _ in tqdm(range(iterations), desc=desc, disable=not progress, leave=False):
        alpha = _render_alpha(gd, cams, log_s.exp(), rotation_from_6d(r6), t)
        loss = mask_loss(alpha, masks, settings.lambda_dssim, settings.lambda_center)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise SgausError("registration diverged (the loss is not finite)")
        if value < best[0]:  # the parameters this loss was computed with
            best = (value, Similarity(float(log_s.detach().exp()), rotation_from_6d(r6.detach()).double().numpy(),
                                      t.detach().double().numpy()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(value)
    return best[1], best[0], losses


def register(g: Gaussians, cams: Cameras, masks: torch.Tensor, settings: RegistrationSettings,
             progress: bool = True, log=None) -> Registration:
    """Fit the similarity mapping ``g`` (static frame) onto the masks [C,H,W,1] seen by ``cams``."""
    coarse = subsample(g, settings.coarse_gaussians, settings.seed)
    hyps = initial_hypotheses(coarse, cams, masks, settings)
    if log:
        log(f"registration: {len(hyps)} initial guesses scored; searching around the best {settings.refine_top}")
    size = float(np.linalg.norm(g.means.detach().double().numpy().std(0))) * 2 * hyps[0][1].scale
    mid, mid_masks = _at_side(cams, masks, 2 * settings.coarse_side)
    records, best = [], None
    for i, (score, sim) in enumerate(tqdm(hyps[:settings.refine_top], desc="registration search",
                                          disable=not progress, leave=False)):
        found, loss = local_search(coarse, mid, mid_masks, sim, settings)
        records.append({"index": i, "score": score, "searched": loss, "scale": found.scale})
        if best is None or loss < best[1]:
            best = (found, loss, sim)
    sim, loss, losses = _refine(g, cams, masks, best[0], settings.iterations, settings, size, progress, "registration")
    return Registration(sim, best[2], loss, losses, records)


def overlay_picture(g: Gaussians, cams: Cameras, images: torch.Tensor, masks: torch.Tensor,
                    rows: list[tuple[str, Similarity]]) -> np.ndarray:
    """uint8 [H',W',3]: one row per (label, similarity), one column per view; each tile is the
    frame-0 image darkened, the recorded mask's outline in green and the mapped Gaussians'
    rendered silhouette in magenta."""
    tiles = []
    with torch.no_grad():
        for _label, sim in rows:
            alpha = _render_alpha(g, cams, torch.tensor(sim.scale), torch.tensor(sim.rotation).float(),
                                  torch.tensor(sim.translation).float())
            row = []
            for c in range(len(cams)):
                m = masks[c, ..., 0]
                edge = (m > 0.5) & ~(torch.nn.functional.max_pool2d((m < 0.5).float()[None, None], 3, 1, 1)[0, 0] < 0.5)
                img = 0.45 * images[c, ..., :3]
                a = alpha[c, ..., 0:1].clamp(0, 1)
                img = img * (1 - 0.6 * a) + 0.6 * a * torch.tensor([1.0, 0.2, 1.0])
                img[edge] = torch.tensor([0.1, 1.0, 0.1])
                row.append(img)
            tiles.append(torch.cat(row, 1))
    return (torch.cat(tiles, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def rest_ground(g: Gaussians, cams: Cameras, masks: torch.Tensor, up, settings: RegistrationSettings,
                progress: bool = True, log=None, quantile: float = 0.002) -> tuple[np.ndarray, Registration]:
    """The ground plane's point when it is not known (capture.json ``"ground": "rest"``): the
    object lies on the floor in the last frame, so the static Gaussians registered onto that
    frame's masks (their own similarity: the object has moved and turned since frame 0) touch the
    plane with their lowest side. Returns the point of the plane (normal ``up``) below the mapped
    Gaussians' centre, at the ``quantile`` of the heights of their lower extents (centre minus one
    scale along ``up``; a low quantile rather than the minimum, so that a stray Gaussian below the
    object does not set the floor), and the registration. The undeformed shape is placed rigidly,
    so a soft object's plane comes out low by about its sag at rest (measured: 3.8 cm, 10 % of the
    size, for a Spot of E = 5e4 Pa that sags 2.5 cm); RUN/ground.png shows it for checking, and
    capture.json's explicit ``ground`` is the better choice whenever the floor is known."""
    up = np.asarray(up, np.float64)
    up = up / np.linalg.norm(up)
    r = register(g, cams, masks, settings, progress, log)
    moved = r.similarity.gaussians(g)
    means = moved.means.double().numpy()
    sigma = moved.log_scales.double().exp().numpy().reshape(len(means), -1).max(1)
    height = float(np.quantile(means @ up - sigma, quantile))
    centre = means.mean(0)
    return centre + (height - centre @ up) * up, r
