"""The simulatable digital asset that `sgaus fit` writes and `sgaus simulate` / `eval` load.

RUN/asset/ holds:
  gaussians.ply  refined Gaussians at their bound positions at t = 0 (3DGS layout)
  anchors.npz    rest_positions [N,3], neighbors [N,K], rest_length [N,K],
                 binding_index [G,n_b], binding_weight [G,n_b]
  physics.json   format, simulator settings (SimConfig), fitted parameters (log10 stiffness per
                 anchor, kappa, friction logit, initial velocity) and provenance (dataset, frames)
"""
from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import atomic_dir, atomic_file, write_json
from pipeline.gaussians import Gaussians, load_ply, save_ply
from taichi_sim.binding import Binding, apply_binding
from taichi_sim.spring_mass import SimConfig, SpringModel, rollout_with_retry

ASSET_FORMAT = "sgaus-asset/1"


@dataclass
class Asset:
    gaussians: Gaussians
    model: SpringModel
    binding: Binding
    log_stiffness: torch.Tensor  # [N] log10 k_i (Eq. 16)
    kappa: torch.Tensor  # [] soft vector parameter (Eq. 8)
    friction_logit: torch.Tensor  # [] ground friction parameter phi
    v0: torch.Tensor  # [3] initial velocity
    info: dict = field(default_factory=dict)

    @property
    def config(self) -> SimConfig:
        return self.model.config

    def with_config(self, **changes) -> "Asset":
        """A copy whose simulator settings are edited (gravity, ground, substeps...)."""
        cfg = dataclasses.replace(self.model.config, **changes)
        model = SpringModel(self.model.rest_positions, self.model.neighbors, self.model.rest_length, cfg)
        return dataclasses.replace(self, model=model)


def save_asset(directory: str | Path, asset: Asset) -> Path:
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_ply(tmp / "gaussians.ply", asset.gaussians)
        with atomic_file(tmp / "anchors.npz", suffix=".npz") as f:
            np.savez(
                f,
                rest_positions=asset.model.rest_positions.detach().cpu().numpy(),
                neighbors=asset.model.neighbors.detach().cpu().numpy(),
                rest_length=asset.model.rest_length.detach().cpu().numpy(),
                binding_index=asset.binding.index.detach().cpu().numpy(),
                binding_weight=asset.binding.weight.detach().cpu().numpy(),
            )
        write_json(
            tmp / "physics.json",
            {
                "format": ASSET_FORMAT,
                "sim": dataclasses.asdict(asset.model.config),
                "log_stiffness": asset.log_stiffness.detach().cpu().double().tolist(),
                "kappa": float(asset.kappa),
                "friction_logit": float(asset.friction_logit),
                "v0": asset.v0.detach().cpu().double().tolist(),
                "info": asset.info,
            },
        )
    return directory


def asset_dir(run_or_asset: str | Path) -> Path:
    p = Path(run_or_asset)
    if (p / "physics.json").exists():
        return p
    if (p / "asset" / "physics.json").exists():
        return p / "asset"
    if not p.exists():
        raise FileNotFoundError(f"no such run directory: {p}")
    raise ValueError(f"{p} holds no fitted asset (asset/physics.json is missing): run `sgaus fit` first")


def load_asset(run_or_asset: str | Path) -> Asset:
    d = asset_dir(run_or_asset)
    try:
        phys = json.loads((d / "physics.json").read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{d / 'physics.json'} is not valid JSON") from None
    if phys.get("format") != ASSET_FORMAT:
        raise ValueError(f"{d} holds an asset of format {phys.get('format')!r}; this sgaus reads {ASSET_FORMAT!r}")
    try:
        arr = np.load(d / "anchors.npz")
        sim = dict(phys["sim"])
        for key in ("gravity", "ground_point", "ground_normal"):
            if sim.get(key) is not None:
                sim[key] = tuple(sim[key])
        cfg = SimConfig(**sim)
        model = SpringModel(
            torch.from_numpy(arr["rest_positions"]).float(),
            torch.from_numpy(arr["neighbors"]).long(),
            torch.from_numpy(arr["rest_length"]).float(),
            cfg,
        )
        binding = Binding(torch.from_numpy(arr["binding_index"]).long(), torch.from_numpy(arr["binding_weight"]).float())
        return Asset(
            gaussians=load_ply(d / "gaussians.ply"),
            model=model,
            binding=binding,
            log_stiffness=torch.tensor(phys["log_stiffness"], dtype=torch.float32),
            kappa=torch.tensor(float(phys["kappa"]), dtype=torch.float32),
            friction_logit=torch.tensor(float(phys["friction_logit"]), dtype=torch.float32),
            v0=torch.tensor(phys["v0"], dtype=torch.float32),
            info=phys.get("info", {}),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"{d} is not a complete sgaus asset (missing {err})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{d} is not a complete sgaus asset ({err.__class__.__name__}: {err})") from None


def simulate_asset(asset: Asset, n_frames: int, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Forward simulation of the asset: anchor positions [F+1,N,3], Gaussian centres [F+1,G,3],
    and the substeps per frame that were needed (raised automatically on instability)."""
    if n_frames < 0:
        raise ValueError(f"the number of frames must not be negative, got {n_frames}")
    with torch.no_grad():
        positions, _v, substeps = rollout_with_retry(
            asset.model,
            asset.model.rest_positions,
            asset.v0,
            asset.log_stiffness,
            asset.kappa,
            asset.friction_logit,
            n_frames,
        )
        means = apply_binding(asset.binding, positions)
    return positions, means, substeps
