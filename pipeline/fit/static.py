"""Static reconstruction (paper Sec. 4.1): isotropic 3D Gaussians fitted to frame 0 of every view.

Each Gaussian has a centre, an RGB colour and an opacity; its scale is the constant ``s0``
during this stage (the paper keeps one uniform scale so that the centres spread evenly over
the object; the refine stage frees it later). The procedure follows 3D Gaussian Splatting:

1. initial centres inside the visual hull carved from the alpha masks (candidates sampled in
   a box all cameras see; a candidate is kept when at least 3/4 of the views see it and it
   projects inside the mask of every view that sees it), or random points in that box (``init="box"``); initial colours are the mean
   colour under each centre's projections;
2. Adam on L1 + lambda D-SSIM (Eq. 18 with lambda = 0.2) between renders on black and the
   input images composited on black, a few random views per iteration; the centres' learning
   rate decays exponentially to 1 % and is given in units of the scene radius;
3. every ``densify_every`` iterations within [densify_from, densify_until): Gaussians whose
   mean view-space position gradient exceeds ``grad_threshold`` are cloned (3DGS' clone; with a
   constant scale there is no split), Gaussians below ``prune_opacity`` are removed.

The view-space gradient is measured as 3DGS does, in normalised device coordinates (pixels x
2 / width), from the centre's 3D gradient: moving a centre by one pixel moves it z / f in the
world, so |dL/d(pixel)| = |dL/dmean| z / f (z / f averaged over the iteration's views that
see it). It is averaged over the iterations in which the Gaussian was in front of a camera.
Its scale depends on how much of the image one Gaussian covers: the default threshold suits
the small images and few thousand Gaussians of CPU runs (3DGS uses 0.0002 at 800 px).
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from pipeline.data.cameras import Cameras
from pipeline.data.datasets import VideoDataset
from pipeline.data.gaussians import Gaussians
from pipeline.fit.checkpoint import Checkpoint, rng_state, set_rng_state
from pipeline.fit.geometry import inside_visual_hull, lookup_pixels
from taichi_sim.errors import SgausError


@dataclass
class StaticSettings:
    """Settings of the static stage (defaults in brackets).

    iterations [1500]         Adam steps.
    scale [0.003]             s0, the constant isotropic scale (std-dev, scene units).
    lr_means [0.002]          learning rate of the centres, in units of the scene radius; decays
                              exponentially to 1 % of it by the last iteration.
    lr_colors [0.01]          learning rate of the RGB colours.
    lr_opacity [0.05]         learning rate of the opacity logits.
    views_per_iteration [4]   views rendered per iteration (drawn without repetition, cycling).
    densify_from [None]       first densification iteration (None: iterations // 10).
    densify_until [None]      no densification from here on (None: iterations * 6 // 10).
    densify_every [None]      period of densification and pruning (None: max(25, iterations // 30)).
    grad_threshold [0.0005]   clone Gaussians whose mean view-space gradient (NDC) exceeds this.
    prune_opacity [0.01]      remove Gaussians less opaque than this (also after the last step).
    opacity_reset_every [0]   3DGS' opacity reset: every this many iterations before densify_until,
                              every opacity above reset_opacity is lowered to it and its Adam
                              moments cleared, so the next densifications prune what stays faint
                              (0: never).
    reset_opacity [0.01]      the opacity of that reset.
    n_init [2000]             number of initial Gaussians.
    image_scale [1.0]         images resized by this factor before fitting.
    lambda_dssim [0.2]        weight of D-SSIM in the loss (Eq. 18).
    init ["hull"]             "hull": inside the visual hull of the masks; "box": anywhere in the box.
    init_opacity [0.3]        initial opacity of every Gaussian.
    seed [0]                  seed of every random choice.
    max_gaussians [200000]    densification stops adding Gaussians at this count.
    """

    iterations: int = 1500
    scale: float = 0.003
    lr_means: float = 0.002
    lr_colors: float = 0.01
    lr_opacity: float = 0.05
    views_per_iteration: int = 4
    densify_from: int | None = None
    densify_until: int | None = None
    densify_every: int | None = None
    grad_threshold: float = 0.0005
    prune_opacity: float = 0.01
    opacity_reset_every: int = 0
    reset_opacity: float = 0.01
    n_init: int = 2000
    image_scale: float = 1.0
    lambda_dssim: float = 0.2
    init: str = "hull"
    init_opacity: float = 0.3
    seed: int = 0
    max_gaussians: int = 200000

    def validate(self) -> "StaticSettings":
        for name in ("iterations", "n_init", "views_per_iteration", "max_gaussians"):
            if int(getattr(self, name)) <= 0:
                raise SgausError(f"static settings: {name} must be positive, got {getattr(self, name)}")
        for name in ("scale", "lr_means", "lr_colors", "lr_opacity", "image_scale"):
            v = float(getattr(self, name))
            if not (v > 0 and math.isfinite(v)):
                raise SgausError(f"static settings: {name} must be a positive number, got {v}")
        if self.init not in ("hull", "box"):
            raise SgausError(f"static settings: init must be 'hull' or 'box', got {self.init!r}")
        if not 0.0 <= self.lambda_dssim <= 1.0:
            raise SgausError(f"static settings: lambda_dssim must lie in [0, 1], got {self.lambda_dssim}")
        if not 0.0 < self.init_opacity < 1.0:
            raise SgausError(f"static settings: init_opacity must lie in (0, 1), got {self.init_opacity}")
        if not 0.0 <= self.prune_opacity < 1.0:
            raise SgausError(f"static settings: prune_opacity must lie in [0, 1), got {self.prune_opacity}")
        if int(self.opacity_reset_every) < 0:
            raise SgausError(f"static settings: opacity_reset_every must not be negative, "
                             f"got {self.opacity_reset_every}")
        if not 0.0 < self.reset_opacity < 1.0:
            raise SgausError(f"static settings: reset_opacity must lie in (0, 1), got {self.reset_opacity}")
        return self

    def schedule(self) -> tuple[int, int, int]:
        """(densify_from, densify_until, densify_every) with the defaults resolved."""
        n = int(self.iterations)
        start = n // 10 if self.densify_from is None else int(self.densify_from)
        stop = n * 6 // 10 if self.densify_until is None else int(self.densify_until)
        every = max(25, n // 30) if self.densify_every is None else int(self.densify_every)
        if every <= 0:
            raise SgausError(f"static settings: densify_every must be positive, got {every}")
        return start, stop, every

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- scene bounds
def viewing_box(cams: Cameras) -> tuple[torch.Tensor, float]:
    """Centre [3] and half-size of a cube every camera looks at: the centre is the point
    nearest to all optical axes (least squares), the half-size the radius of the largest
    sphere there that fits in every view's field of view."""
    c2w = torch.linalg.inv(cams.viewmats.double())
    origins, axes = c2w[:, :3, 3], c2w[:, :3, 2]  # OpenCV: camera +z looks forward
    eye = torch.eye(3, dtype=torch.float64)
    proj = eye - axes[:, :, None] * axes[:, None, :]  # projectors orthogonal to each axis
    A, b = proj.sum(0), (proj @ origins[:, :, None]).sum(0)[:, 0]
    if len(cams) == 1 or torch.linalg.matrix_rank(A) < 3:
        centre = origins[0] + axes[0] * 1.0
    else:
        centre = torch.linalg.solve(A, b)
    dist = ((centre - origins) * axes).sum(1)
    if torch.any(dist <= 0):
        raise SgausError("cameras do not look at a common region (the centre of their views is behind one)")
    Ks = cams.Ks.double()
    half_fov = torch.minimum(torch.atan(0.5 * cams.width / Ks[:, 0, 0]), torch.atan(0.5 * cams.height / Ks[:, 1, 1]))
    radius = float((dist * torch.sin(half_fov)).min())
    return centre.float(), radius


def carve_hull(alpha: torch.Tensor, cams: Cameras, centre: torch.Tensor, radius: float, n: int,
               gen: torch.Generator, threshold: float = 0.5) -> torch.Tensor:
    """Up to ``n`` points [P,3] inside the visual hull of the masks ``alpha`` [C,H,W,1]: points
    of the cube (centre +- radius) seen by at least 3/4 of the views and inside the mask of
    every view that sees them (so an object cut by one image border is not carved away there).
    Sampled up to three times, each time in the bounding box of the survivors so far, so that
    thin objects still get ``n`` points."""
    lo, hi = centre - radius, centre + radius
    kept = torch.empty(0, 3)
    for _round in range(3):
        cand = lo + (hi - lo) * torch.rand(max(20 * n, 20000), 3, generator=gen)
        kept = torch.cat([kept, cand[inside_visual_hull(cand, alpha, cams, threshold, min_view_fraction=0.75)]])
        if len(kept) == 0:
            raise SgausError("the visual hull of the masks is empty: the masks do not overlap in 3D "
                             "(wrong cameras, or no object in frame 0)")
        pad = 2 * (hi - lo) / 64
        lo, hi = torch.maximum(kept.min(0).values - pad, lo), torch.minimum(kept.max(0).values + pad, hi)
        if len(kept) >= n:
            break
    pick = torch.randperm(len(kept), generator=gen)[:n]
    return kept[pick]


def initial_gaussians(images: torch.Tensor, cams: Cameras, settings: StaticSettings) -> Gaussians:
    """Initial Gaussians from the RGBA images [C,H,W,4] of frame 0 (see the module docstring)."""
    gen = torch.Generator().manual_seed(settings.seed)
    centre, radius = viewing_box(cams)
    alpha = images[..., 3:4]
    if settings.init == "hull" and bool((alpha < 0.5).any()):
        pts = carve_hull(alpha, cams, centre, radius, settings.n_init, gen)
    else:
        pts = centre - radius + 2 * radius * torch.rand(settings.n_init, 3, generator=gen)
    rgb = images[..., :3] * alpha
    values, inside = lookup_pixels(rgb, cams, pts)
    w = inside.float()[..., None]
    colors = (values * w).sum(0) / w.sum(0).clamp_min(1)
    colors = torch.where(w.sum(0) > 0, colors, torch.full_like(colors, 0.5))
    n = len(pts)
    logit = math.log(settings.init_opacity / (1 - settings.init_opacity))
    return Gaussians(means=pts.float(), log_scales=torch.full((n,), math.log(settings.scale)),
                     colors=colors.float().clamp(0, 1), opacity_logits=torch.full((n,), logit))


# ----------------------------------------------------------------------------- optimisation
class _Optimiser:
    """Adam over means, colours and opacity logits, able to keep its moments when Gaussians are
    cloned or pruned (rows gathered with the same index as the parameters)."""

    NAMES = ("means", "colors", "opacity_logits")

    def __init__(self, g: Gaussians, lrs: dict):
        self.g, self.lrs = g, lrs
        for name in self.NAMES:
            getattr(g, name).requires_grad_(True)
        self.adam = torch.optim.Adam([{"params": [getattr(g, n)], "lr": lrs[n], "name": n} for n in self.NAMES],
                                     eps=1e-15)

    def set_lr(self, name: str, lr: float) -> None:
        for group in self.adam.param_groups:
            if group["name"] == name:
                group["lr"] = lr

    def reset_opacity(self, value: float) -> None:
        """3DGS' opacity reset: every opacity above ``value`` set to it, the opacities' Adam
        moments cleared (in place: the parameter stays the optimiser's)."""
        logit = math.log(value / (1.0 - value))
        with torch.no_grad():
            self.g.opacity_logits.clamp_(max=logit)
        state = self.adam.state.get(self.g.opacity_logits, {})  # the parameter is the optimiser's own (gather)
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].zero_()

    def gather(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (repeats clone) of every parameter and of its Adam moments."""
        for group in self.adam.param_groups:
            old = group["params"][0]
            new = old.detach()[index].clone().requires_grad_(True)
            state = self.adam.state.pop(old, None)
            if state:
                state = {k: (v[index].clone() if torch.is_tensor(v) and v.shape[:1] == old.shape[:1] else v)
                         for k, v in state.items()}
                self.adam.state[new] = state
            group["params"][0] = new
            setattr(self.g, group["name"], new)
        self.g.log_scales = self.g.log_scales[index]


def reconstruct_static(dataset: VideoDataset, settings: StaticSettings, progress: bool = True,
                       callback=None, checkpoint: Checkpoint | None = None, counts: list | None = None) -> Gaussians:
    """Fit isotropic Gaussians of constant scale ``settings.scale`` to frame 0 of every view of
    ``dataset`` (Taichi must be initialised: the renderer uses it). ``callback(iteration, loss,
    gaussians)``, when given, is called after every step. ``checkpoint`` saves the loop's state
    (pipeline/fit/checkpoint.py) and restores it on resume. ``counts``, when given, receives the
    number of Gaussians from the first iteration on and after every densification that changed
    it, as [iterations done, count] pairs (a resumed loop restores the pairs before the resume).
    Returns detached Gaussians."""
    from render import l1_dssim_loss

    checkpoint = checkpoint or Checkpoint.disabled("static")

    settings.validate()
    cams = dataset.cameras_at(settings.image_scale)
    images = dataset.frame(0, scale=settings.image_scale)
    target = images[..., :3] * images[..., 3:4]  # composited on black, like the renders
    g = initial_gaussians(images, cams, settings)
    _centre, radius = viewing_box(cams)
    lr_means0 = settings.lr_means * radius
    opt = _Optimiser(g, {"means": lr_means0, "colors": settings.lr_colors, "opacity_logits": settings.lr_opacity})
    start, stop, every = settings.schedule()
    n_views = min(settings.views_per_iteration, len(cams))
    order: list[int] = []
    rng = random.Random(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed + 1)
    grad_sum = torch.zeros(len(g), dtype=torch.float64)
    grad_count = torch.zeros(len(g), dtype=torch.float64)
    R = cams.viewmats[:, :3, :3]
    focal = 0.5 * (cams.Ks[:, 0, 0] + cams.Ks[:, 1, 1])
    first = 0
    saved = checkpoint.restore()
    if saved is not None:  # the Gaussians (their number changes), Adam's moments and every random state
        first = saved["iteration"]
        g = Gaussians(*(t.clone() for t in saved["gaussians"]))
        opt = _Optimiser(g, {"means": lr_means0, "colors": settings.lr_colors, "opacity_logits": settings.lr_opacity})
        opt.adam.load_state_dict(saved["adam"])
        order = list(saved["order"])
        set_rng_state(rng, saved["rng"])
        gen.set_state(saved["gen"])
        grad_sum, grad_count = saved["grad_sum"].clone(), saved["grad_count"].clone()
        if counts is not None:
            counts[:] = [list(pair) for pair in saved.get("counts", [])]
    history = counts if counts is not None else []

    def state() -> dict:
        return {"iteration": it + 1, "gaussians": [t.detach().clone() for t in g.tensors()],
                "adam": opt.adam.state_dict(), "order": list(order), "rng": rng_state(rng), "gen": gen.get_state(),
                "grad_sum": grad_sum.clone(), "grad_count": grad_count.clone(), "counts": [list(p) for p in history]}

    bar = tqdm(range(first, settings.iterations), desc="static", unit="it", disable=not progress, leave=False,
               initial=first, total=settings.iterations)
    for it in bar:
        t = it / max(1, settings.iterations - 1)
        opt.set_lr("means", lr_means0 * 0.01 ** t)
        if len(order) < n_views:
            perm = list(range(len(cams)))
            rng.shuffle(perm)
            order += perm
        views, order = order[:n_views], order[n_views:]
        sub = cams[views]
        rgb = g.render(sub)
        loss = l1_dssim_loss(rgb, target[views], settings.lambda_dssim)
        opt.adam.zero_grad(set_to_none=True)
        loss.backward()
        if start <= it < stop:
            with torch.no_grad():  # view-space gradient in NDC, from the 3D gradient (module docstring)
                z = torch.einsum("cj,nj->cn", R[views, 2], g.means.detach()) + cams.viewmats[views, None, 2, 3]
                visible = z > 0.01
                px_per_unit = (visible * focal[views, None] / z.clamp_min(0.01)).sum(0) / visible.sum(0).clamp_min(1)
                ndc = g.means.grad.norm(dim=1) / px_per_unit.clamp_min(1e-12) * (0.5 * cams.width)
                seen = visible.any(0)
                grad_sum += torch.where(seen, ndc, torch.zeros_like(ndc)).double()
                grad_count += seen.double()
        opt.adam.step()
        with torch.no_grad():
            g.colors.clamp_(0.0, 1.0)
        if start <= it < stop and (it - start) % every == every - 1:
            index, n_clones = _densify_and_prune(g, grad_sum, grad_count, settings)
            opt.gather(index)
            if n_clones:  # nudge each clone off its original by half a scale (else they stay together)
                with torch.no_grad():
                    jitter = 0.5 * settings.scale * torch.randn(n_clones, 3, generator=gen)
                    g.means[-n_clones:] += jitter.to(g.means.dtype)
            grad_sum = torch.zeros(len(g), dtype=torch.float64)
            grad_count = torch.zeros(len(g), dtype=torch.float64)
        reset = settings.opacity_reset_every
        if reset and it < stop and (it + 1) % reset == 0:
            opt.reset_opacity(settings.reset_opacity)
        value = loss.item()
        if not math.isfinite(value):
            raise SgausError(f"static reconstruction diverged at iteration {it} (loss {value})")
        if progress:
            bar.set_postfix(loss=f"{value:.4f}", n=len(g), refresh=False)
        if not history or history[-1][1] != len(g):
            history.append([it + 1, len(g)])
        if callback is not None:
            callback(it, value, g)
        checkpoint.step(it + 1, state)
    out = g.detach_clone()
    keep = out.opacities() >= settings.prune_opacity
    if bool(keep.any()):
        out = out.subset(keep)
    return out


def _densify_and_prune(g: Gaussians, grad_sum, grad_count, settings: StaticSettings) -> tuple[torch.Tensor, int]:
    """Index [M] of the rows to keep, then the rows to clone (repeated at the end), and the
    number of clones. Pruning never removes every Gaussian."""
    mean_grad = grad_sum / grad_count.clamp_min(1)
    alive = torch.sigmoid(g.opacity_logits.detach()) >= settings.prune_opacity
    if not bool(alive.any()):
        alive = torch.ones_like(alive)
    clone = (mean_grad > settings.grad_threshold) & alive
    room = settings.max_gaussians - int(alive.sum())
    if int(clone.sum()) > room:
        clone_idx = torch.nonzero(clone)[:, 0]
        top = torch.argsort(mean_grad[clone_idx], descending=True)[:max(0, room)]
        clone = torch.zeros_like(clone)
        clone[clone_idx[top]] = True
    extra = torch.nonzero(clone)[:, 0]
    return torch.cat([torch.nonzero(alive)[:, 0], extra]), len(extra)


# ----------------------------------------------------------------------------- the command
def render_views(g: Gaussians, cams: Cameras) -> torch.Tensor:
    """RGB renders [C,H,W,3] on black, one camera at a time (bounded memory)."""
    with torch.no_grad():
        return torch.cat([g.render(cams[c]) for c in range(len(cams))])


def comparison_grid(renders: torch.Tensor, targets: torch.Tensor, pairs_per_row: int = 2) -> torch.Tensor:
    """uint8 image [rows*H, pairs*2W, 3]: each render next to its input, 2 px grey gaps."""
    C, H, W, _ = renders.shape
    rows = math.ceil(C / pairs_per_row)
    gap = 2
    grid = torch.full((rows * (H + gap) - gap, pairs_per_row * (2 * W + gap) - gap, 3), 0.25)
    for c in range(C):
        r, k = divmod(c, pairs_per_row)
        y, x = r * (H + gap), k * (2 * W + gap)
        grid[y:y + H, x:x + W] = renders[c]
        grid[y:y + H, x + W:x + 2 * W] = targets[c]
    return (grid.clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def reconstruct_to_dir(data, out, settings: StaticSettings, image_size: int | None = None, progress: bool = True,
                       log=print) -> dict:
    """``sgaus reconstruct``: fit frame 0 of the dataset ``data`` (every video camera's and any static
    photos', pipeline.data.datasets.frame0_views) and write ``out/gaussians.ply``,
    ``out/settings.json`` and ``out/renders.png`` (each atomically, all after the fit
    succeeded). ``image_size`` (longest side in pixels), when given, sets
    ``settings.image_scale`` (never above 1). Returns the summary written to settings.json
    (with the PSNR of every view)."""
    import time
    from pathlib import Path

    import imageio.v3 as iio

    from pipeline.data.datasets import frame0_views, load_dataset
    from pipeline.data.files import write_bytes, write_json
    from pipeline.data.gaussians import save_ply
    from render import psnr

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out exists and is not a directory: {out}")
    settings.validate()
    ds = frame0_views(load_dataset(data))
    if image_size:
        settings.image_scale = min(1.0, image_size / max(ds.cameras.width, ds.cameras.height))
    start = time.perf_counter()
    g = reconstruct_static(ds, settings, progress=progress)
    seconds = time.perf_counter() - start
    cams = ds.cameras_at(settings.image_scale)
    images = ds.frame(0, scale=settings.image_scale)
    targets = images[..., :3] * images[..., 3:4]
    renders = render_views(g, cams)
    values = psnr(renders, targets).tolist()
    summary = {"format": "sgaus-reconstruction/1", "data": str(Path(data).resolve()), "settings": settings.to_dict(), "n_gaussians": len(g),
               "seconds": round(seconds, 2), "image_size": [cams.width, cams.height],
               "psnr": dict(zip(cams.names, [round(v, 3) for v in values]))}
    png = iio.imwrite("<bytes>", comparison_grid(renders, targets).numpy(), extension=".png")
    out.mkdir(parents=True, exist_ok=True)
    save_ply(out / "gaussians.ply", g)
    write_bytes(out / "renders.png", png)
    write_json(out / "settings.json", summary)
    for name, v in zip(cams.names, values):
        log(f"{name}: PSNR {v:.2f} dB")
    log(f"mean PSNR {sum(values) / len(values):.2f} dB over {len(values)} views; {len(g)} Gaussians in "
        f"{seconds:.0f} s")
    return summary
