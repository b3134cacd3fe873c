"""Shared fixtures. Taichi is initialised once per session, on the CPU, in f64 so that
the Taichi kernels can be compared with their PyTorch twins and finite differences at
1e-6; kernels take their precision from the arrays they are given, so f32 runs too."""
from __future__ import annotations

import taichi_sim  # noqa: F401  (its environment defaults before PyTorch loads)
import pytest
import torch
from click.testing import CliRunner

TINY = ["--preset", "tiny", "--quiet"]


def invoke(*args, **kw):
    """Run the sgaus CLI in-process on the CPU; the click Result."""
    from cli import cli

    return CliRunner().invoke(cli, ["--arch", "cpu", *map(str, args)], **kw)


@pytest.fixture(scope="session", autouse=True)
def taichi_runtime():
    from taichi_sim.runtime import init_taichi

    return init_taichi("cpu", default_fp="f64")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny generated dataset (a sphere dropped 5 cm, 4 views of 48 px, 10 frames, 7 fitted)."""
    out = tmp_path_factory.mktemp("data") / "ball"
    r = invoke("generate-mpm", "--shape", "sphere", "--views", 4, "--frames", 10, "--fit-frames", 7,
               "--resolution", 48, "--grid", 24, "--seed", 1, "--drop-height", 0.05, "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """`sgaus fit --preset tiny` of tiny_data (tests must not modify it: copy it first)."""
    run = tmp_path_factory.mktemp("runs") / "ball"
    r = invoke("fit", tiny_data, "--out", run, *TINY)
    assert r.exit_code == 0, r.output
    return run


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


def lattice(n_side: int, spacing: float, origin=(0.0, 0.0, 0.0), dtype=torch.float64) -> torch.Tensor:
    """[n_side^3, 3] points of a cubic lattice starting at ``origin``."""
    r = torch.arange(n_side, dtype=dtype) * spacing
    g = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    return g + torch.tensor(origin, dtype=dtype)


def make_asset(anchors: torch.Tensor, gaussians, k_neighbors: int, n_c: int, substeps: int, velocity=(0.0, 0.0, 0.0),
               frames: int = 20, n_b: int = 4):
    """A small asset: float32 anchors with k-nearest springs (chosen in float64), ``gaussians``
    bound to them, log10 k = 3 everywhere, kappa 0, friction logit -1, gravity -9.8 y, ground y = 0."""
    from pipeline.asset import Asset
    from taichi_sim.binding import compute_binding
    from taichi_sim.spring_model import SpringModel, nearest_springs
    from taichi_sim.spring_params import SpringParams
    from taichi_sim.spring_rollout import Integrator

    neighbors, rest = nearest_springs(anchors.double(), k_neighbors)
    model = SpringModel(anchors.float(), neighbors, rest.float(), n_c=n_c)
    return Asset(gaussians=gaussians, model=model, binding=compute_binding(gaussians.means, anchors.float(), n_b, 0.5),
                 params=SpringParams.uniform(len(anchors), 3.0, 0.0, -1.0), v0=torch.tensor(velocity),
                 integrator=Integrator(frame_dt=0.03, substeps=substeps), info={"n_frames": frames})


class SyntheticVideo:
    """What the fit stages read of a video (cameras; RGB composited on black; RGBA; alpha),
    made from renders of known motion."""

    def __init__(self, cameras, renders: list):
        self.cameras = cameras
        self._rgb = [rgb for rgb, _a in renders]
        self._alpha = [a for _r, a in renders]

    def rgb(self, frame, cams=None):
        img = self._rgb[frame]
        return img if cams is None else img[cams]

    def alpha(self, frame):
        return self._alpha[frame]

    def rgba(self, frame):
        a = self._alpha[frame]
        straight = torch.where(a > 0, self._rgb[frame] / a.clamp_min(1e-6), torch.zeros_like(self._rgb[frame]))
        return torch.cat([straight.clamp(0, 1), a], -1)


def cube_scene(n_side: int = 5, k_neighbors: int = 24, size: int = 48):
    """A textured cube of anchors 10 cm above the ground, Gaussians on its faces, four cameras:
    (model, binding, gaussians, cameras)."""
    import math

    from pipeline.data.cameras import orbit_cameras
    from pipeline.data.gaussians import Gaussians
    from taichi_sim.binding import apply_binding, compute_binding
    from taichi_sim.spring_model import build_spring_model

    side = torch.linspace(-0.06, 0.06, n_side)
    anchors = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    anchors[:, 1] += 0.16
    model = build_spring_model(anchors, k_neighbors, n_c=8, gravity=(0.0, -9.8, 0.0), ground_point=(0.0, 0.0, 0.0),
                               ground_normal=(0.0, 1.0, 0.0))
    gen = torch.Generator().manual_seed(0)
    # Gaussians on the cube's faces with a colourful texture, so deformation shows in the images
    pts = (torch.rand(1500, 3, generator=gen) - 0.5) * 0.12
    face = torch.randint(0, 3, (1500,), generator=gen)
    pts[torch.arange(1500), face] = torch.sign(pts[torch.arange(1500), face]) * 0.06
    pts[:, 1] += 0.16
    binding = compute_binding(pts, anchors, 4, 0.5)
    means0 = apply_binding(binding, anchors)
    colors = torch.stack([0.5 + 0.5 * torch.sin(40 * pts[:, 0]), 0.5 + 0.5 * torch.sin(40 * pts[:, 2] + 1),
                          0.5 + 0.5 * torch.cos(40 * pts[:, 1])], -1)
    g = Gaussians(means=means0, log_scales=torch.full((1500,), math.log(0.006)), colors=colors,
                  opacity_logits=torch.full((1500,), 3.0))
    cams = orbit_cameras(4, 0.6, target=(0.0, 0.1, 0.0), elevation_deg=15, fov_deg=45, width=size, height=size)
    return model, binding, g, cams


def render_video(model, binding, g, cams, params, v0, n_frames: int, substeps: int = 40, frame_dt: float = 0.03):
    """(positions [F,N,3], SyntheticVideo) of the model simulated with ``params`` from rest."""
    from taichi_sim.binding import apply_binding
    from taichi_sim.spring_rollout import Integrator, SpringState, rollout

    with torch.no_grad():
        pos = rollout(model, params, SpringState(model.rest_positions, v0), n_frames - 1,
                      Integrator(frame_dt=frame_dt, substeps=substeps)).positions
        video = SyntheticVideo(cams, [g.render_with_alpha(cams, m) for m in apply_binding(binding, pos)])
    return pos, video
