"""A 3D Gaussian Splatting model the user trained on the static capture (`sgaus fit --static-ply`),
in the INRIA PLY layout: ``x y z``, ``f_dc_0..2`` (and ``f_rest_*`` up to SH degree 3, not used:
the colour is the DC term, rgb = 0.5 + C0 f_dc), ``opacity`` (a logit), ``scale_0..2`` (logs,
anisotropic) and ``rot_0..3`` (a wxyz quaternion).

sgaus' deformation carries isotropic Gaussians (a centre moved by the anchors, one scale), so each
splat is converted to isotropic ones, whichever of two conversions keeps the render closer: the
higher PSNR against the imported model's own render (rotated, anisotropic) on the static views.
The PSNR against the static images is measured for the imported model as it is and for both
conversions too (the figures go into the stage's record and the log):

``single``  one Gaussian per splat, of the geometric-mean scale (the same volume);
``split``   a splat whose largest scale s1 exceeds 1.5 x the middle one s2 becomes n = min(4,
            round(s1 / s2)) Gaussians of scale sqrt(s2 s3) spread evenly along its major axis so
            that the mixture keeps the splat's variance s1^2 along it; others as ``single``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.gaussians import SH_C0, Gaussians, _read_header
from taichi_sim.errors import SgausError


@dataclass
class Splats:
    """Anisotropic splats: means [N,3], log_scales [N,3], quats [N,4] (wxyz, unit), colors [N,3]
    (the DC colour), opacity_logits [N]."""

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    colors: torch.Tensor
    opacity_logits: torch.Tensor

    def render(self, cams):
        from render import rasterization

        rgb, _a, _d = rasterization(self.means, self.log_scales.exp(), torch.sigmoid(self.opacity_logits),
                                    self.colors.clamp(0, 1), cams.viewmats, cams.Ks, cams.width, cams.height,
                                    quats=self.quats)
        return rgb


def read_splat_ply(path) -> Splats:
    """The splats of an INRIA-layout 3DGS PLY (one line naming the file and the problem otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise SgausError(f"--static-ply {path}: file not found")
    data = path.read_bytes()
    n, dtype, offset = _read_header(path, data)
    needed = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
              "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [k for k in needed if k not in dtype.names]
    if missing:
        raise SgausError(f"{path}: not a 3DGS PLY in the INRIA layout (missing {', '.join(missing)})")
    rest = [k for k in dtype.names if k.startswith("f_rest_")]
    if len(rest) not in (0, 9, 24, 45):
        raise SgausError(f"{path}: {len(rest)} f_rest_* properties; SH degrees 0..3 have 0, 9, 24 or 45")
    if len(data) - offset < n * dtype.itemsize:
        raise SgausError(f"{path}: truncated PLY file")
    if n == 0:
        raise SgausError(f"{path}: the PLY holds no Gaussians")
    t = np.frombuffer(data, dtype=dtype, count=n, offset=offset)

    def col(*names):
        return torch.from_numpy(np.stack([t[k].astype(np.float64) for k in names], -1))

    q = col("rot_0", "rot_1", "rot_2", "rot_3")
    norm = q.norm(dim=1, keepdim=True)
    values = torch.cat([col("x", "y", "z"), col("scale_0", "scale_1", "scale_2"), q,
                        col("f_dc_0", "f_dc_1", "f_dc_2"), col("opacity")], 1)
    if not torch.isfinite(values).all() or not bool((norm > 0).all()):
        raise SgausError(f"{path}: non-finite values or zero quaternions")
    return Splats(col("x", "y", "z").float(), col("scale_0", "scale_1", "scale_2").float(), (q / norm).float(),
                  (col("f_dc_0", "f_dc_1", "f_dc_2") * SH_C0 + 0.5).float(), col("opacity")[:, 0].float())


def _rotmats(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = q.unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def to_isotropic(s: Splats, method: str) -> Gaussians:
    """``single`` or ``split`` (module docstring)."""
    scales = s.log_scales.double().exp()
    if method == "single":
        return Gaussians(s.means.clone(), scales.log().mean(1).float(), s.colors.clone(), s.opacity_logits.clone())
    if method != "split":
        raise SgausError(f"unknown conversion {method!r} (single or split)")
    order = scales.argsort(dim=1, descending=True)
    srt = scales.gather(1, order)
    s1, s2, s3 = srt.unbind(1)
    R = _rotmats(s.quats.double())
    major = R.gather(2, order[:, None, :1].expand(-1, 3, 1))[..., 0]  # the major axis' column
    n = torch.where(s1 > 1.5 * s2, torch.clamp(torch.round(s1 / s2), 1, 4), torch.ones_like(s1)).long()
    sigma = torch.where(n > 1, (s2 * s3).sqrt(), scales.log().mean(1).exp())
    means, logs, cols, ops = [], [], [], []
    for k in range(1, 5):
        idx = torch.nonzero(n == k)[:, 0]
        if len(idx) == 0:
            continue
        if k == 1:
            offs = torch.zeros(len(idx), 1)
        else:
            # evenly spaced on [-a, a]: var = a^2 (k + 1) / (3 (k - 1)) = s1^2 - sigma^2
            var = (s1[idx] ** 2 - sigma[idx] ** 2).clamp_min(0)
            a = (var * 3 * (k - 1) / (k + 1)).sqrt()
            offs = a[:, None] * torch.linspace(-1, 1, k, dtype=torch.float64)[None]
        for j in range(offs.shape[1]):
            means.append(s.means[idx].double() + offs[:, j:j + 1] * major[idx])
            logs.append(sigma[idx].log())
            cols.append(s.colors[idx])
            ops.append(s.opacity_logits[idx])
    return Gaussians(torch.cat(means).float(), torch.cat(logs).float(), torch.cat(cols), torch.cat(ops))


def import_splats(s: Splats, frames, log=print) -> tuple[Gaussians, dict]:
    """The isotropic Gaussians of ``s`` that render closest to the static views of ``frames``
    (a FrameCache of the static dataset), and the PSNR of each candidate."""
    from render import psnr

    cams, target = frames.cameras, frames.rgb(0)
    with torch.no_grad():
        imported = s.render(cams).clamp(0, 1)
    report = {"splats": len(s.means), "psnr_imported": float(psnr(imported, target).mean())}
    best = None
    for method in ("single", "split"):
        g = to_isotropic(s, method)
        with torch.no_grad():
            mine = g.render(cams).clamp(0, 1)
        report[f"psnr_{method}"] = float(psnr(mine, target).mean())
        report[f"psnr_{method}_vs_imported"] = float(psnr(mine, imported).mean())
        report[f"gaussians_{method}"] = len(g)
        if best is None or report[f"psnr_{method}_vs_imported"] > best[1]:
            best = (g, report[f"psnr_{method}_vs_imported"], method)
    report["conversion"] = best[2]
    log(f"imported {len(s.means)} splats: PSNR against the static views {report['psnr_imported']:.2f} dB as trained "
        f"(anisotropic), {report['psnr_single']:.2f} dB as one isotropic Gaussian each, {report['psnr_split']:.2f} dB "
        f"split along the major axes ({report['gaussians_split']} Gaussians); against the trained model's render "
        f"{report['psnr_single_vs_imported']:.2f} / {report['psnr_split_vs_imported']:.2f} dB; using '{best[2]}'")
    if not math.isfinite(best[1]):
        raise SgausError("the imported splats render nothing on the static views (another frame than the COLMAP model's?)")
    return best[0], report
