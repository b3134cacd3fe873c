"""The simulatable digital asset that `sgaus fit` writes and `sgaus simulate` / `eval` load.

RUN/asset/ holds:
  gaussians.ply  refined Gaussians at their bound positions at t = 0 (3DGS layout)
  anchors.npz    rest_positions [N,3], neighbors [N,K], rest_length [N,K],
                 binding_index [G,n_b], binding_weight [G,n_b]
  physics.json   format, the model's physical constants, the integrator (frame_dt, substeps,
                 max_substeps), the fitted parameters (log10 stiffness per anchor, kappa,
                 friction logit), the initial velocity and provenance (dataset, frames)

Reading checks every file (shapes, index ranges, finiteness) and names the file and field of
the first problem in one line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.data.anchors import Anchors, load_anchors, save_anchors
from pipeline.data.files import atomic_dir, write_json
from pipeline.data.gaussians import Gaussians, load_ply, save_ply
from pipeline.data.schema import integer, matrix, number, read_json, vector3
from taichi_sim.binding import Binding
from taichi_sim.errors import SgausError
from taichi_sim.spring_model import CHOICES, SpringModel
from taichi_sim.spring_params import SpringParams
from taichi_sim.spring_rollout import Integrator

ASSET_FORMAT = "sgaus-asset/2"


@dataclass
class Asset:
    gaussians: Gaussians
    model: SpringModel
    binding: Binding
    params: SpringParams  # log10 stiffness [N] (Eq. 16), kappa (Eq. 8), friction logit phi
    v0: torch.Tensor  # [3] initial velocity
    integrator: Integrator
    info: dict = field(default_factory=dict)

    def with_physics(self, **changes) -> "Asset":
        """A copy whose model has edited constants (gravity, ground...), sharing its springs."""
        return dataclasses.replace(self, model=self.model.with_physics(**changes))


def save_asset(directory: str | Path, asset: Asset) -> Path:
    directory = Path(directory)
    a = Anchors(asset.model.rest_positions, asset.model.neighbors, asset.model.rest_length,
                              asset.binding)
    with atomic_dir(directory) as tmp:
        save_ply(tmp / "gaussians.ply", asset.gaussians)
        save_anchors(a, tmp / "anchors.npz")
        write_json(tmp / "physics.json", {
            "format": ASSET_FORMAT,
            "model": asset.model.physics(),
            "integrator": {"frame_dt": asset.integrator.frame_dt, "substeps": asset.integrator.substeps,
                           "max_substeps": asset.integrator.max_substeps},
            "log_stiffness": asset.params.log_stiffness.detach().cpu().double().tolist(),
            "kappa": float(asset.params.kappa),
            "friction_logit": float(asset.params.friction_logit),
            "v0": asset.v0.detach().cpu().double().tolist(),
            "info": asset.info,
        })
    return directory


def asset_dir(run_or_asset: str | Path) -> Path:
    p = Path(run_or_asset)
    if (p / "physics.json").exists():
        return p
    if (p / "asset" / "physics.json").exists():
        return p / "asset"
    if not p.exists():
        raise SgausError(f"no such run directory: {p}")
    raise SgausError(f"{p} holds no fitted asset (asset/physics.json is missing): run `sgaus fit` first")


def _model_constants(doc: dict, path: Path) -> dict:
    m = doc.get("model")
    if not isinstance(m, dict):
        raise SgausError(f"{path}: 'model' must be an object of the model's constants")
    out = {"mass": number(m, "mass", path, "model", positive=True),
           "gravity": vector3(m.get("gravity"), "'model.gravity'", path),
           "ground_point": None if m.get("ground_point") is None else vector3(m["ground_point"], "'model.ground_point'", path),
           "ground_normal": vector3(m.get("ground_normal"), "'model.ground_normal'", path, nonzero=True),
           "p_k": number(m, "p_k", path, "model", low=0), "zeta0": number(m, "zeta0", path, "model", low=0),
           "n_c": integer(m.get("n_c"), "'model.n_c'", path, low=0),
           "dead_zone": number(m, "dead_zone", path, "model", low=0),
           # assets written before the contact offset existed collide with the plane itself
           "contact_offset": number(m, "contact_offset", path, "model", low=0) if "contact_offset" in m else 0.0}
    # assets written before "pair" existed gave each anchor's springs its own stiffness
    m = {"spring_stiffness": "anchor", **m}
    m = {"springs": "directed", **m}  # and before mirrored springs, each spring acted on its owner alone
    m = {"contact": "projection", **m}  # and before the penalty ground, the ground projected the anchors
    m = {"contact_floor": "uniform", **m}  # and before the flat floor, every anchor met the same plane
    if m["contact"] == "penalty":
        out["contact_time"] = number(m, "contact_time", path, "model", positive=True)
        out["restitution"] = number(m, "restitution", path, "model", low=0)
    for key, allowed in CHOICES.items():
        if m.get(key) not in allowed:
            raise SgausError(f"{path}: 'model.{key}' must be one of {', '.join(allowed)}, got {m.get(key)!r}")
        out[key] = m[key]
    return out


def load_asset(run_or_asset: str | Path) -> Asset:
    d = asset_dir(run_or_asset)
    path = d / "physics.json"
    phys = read_json(path, dict)
    if phys.get("format") != ASSET_FORMAT:
        raise SgausError(f"{d} holds an asset of format {phys.get('format')!r}; this sgaus reads {ASSET_FORMAT!r} "
                         "(fit it again)")
    gaussians = load_ply(d / "gaussians.ply")
    a = load_anchors(d / "anchors.npz", len(gaussians))
    n = len(a.rest_positions)
    model = SpringModel(a.rest_positions.float(), a.neighbors, a.rest_length.float(), **_model_constants(phys, path))
    integ = phys.get("integrator")
    if not isinstance(integ, dict):
        raise SgausError(f"{path}: 'integrator' must be an object with frame_dt, substeps, max_substeps")
    integrator = Integrator(frame_dt=number(integ, "frame_dt", path, "integrator", positive=True),
                            substeps=integer(integ.get("substeps"), "'integrator.substeps'", path, low=1),
                            max_substeps=integer(integ.get("max_substeps"), "'integrator.max_substeps'", path, low=1))
    params = SpringParams(
        torch.from_numpy(matrix(phys.get("log_stiffness"), ((n,),), "'log_stiffness'", path, "anchor")).float(),
        torch.tensor(number(phys, "kappa", path, "soft vector"), dtype=torch.float32),
        torch.tensor(number(phys, "friction_logit", path, "friction"), dtype=torch.float32))
    try:
        params.check_finite()  # finite in the file, yet a stiffness 10^k float32 cannot hold
    except SgausError as err:
        raise SgausError(f"{path}: {err}") from None
    v0 = torch.from_numpy(matrix(phys.get("v0"), ((3,),), "'v0'", path)).float()
    info = phys.get("info") if isinstance(phys.get("info"), dict) else {}
    for key in ("n_frames", "fit_frames"):  # what simulate and eval read of the provenance
        if info.get(key) is not None:
            integer(info[key], f"'info.{key}'", path, low=1)
    if info.get("image_scale") is not None:
        number(info, "image_scale", path, "info", positive=True)
    return Asset(gaussians, model, Binding(a.binding.index, a.binding.weight.float()), params, v0, integrator, info)

