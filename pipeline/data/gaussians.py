"""3D Gaussians (isotropic by default) and their 3DGS PLY files.

Storage of :class:`Gaussians`, with the activated values the renderer takes:

=================  ==========  ==========================================
field              shape       activated accessor
=================  ==========  ==========================================
``means``          [N,3]       the centres, as they are
``log_scales``     [N] / [N,3] ``scales() = exp(log_scales)`` (std-dev)
``colors``         [N,3]       ``rgb() = colors.clamp(0, 1)``: stored raw
``opacity_logits`` [N]         ``opacities() = sigmoid(opacity_logits)``
=================  ==========  ==========================================

Colours are stored as plain RGB (not logits) so that they read as what they are; optimisers
keep them in range by clamping after each step (the accessor clamps as well).

PLY files follow the INRIA 3D Gaussian Splatting layout that the common splat viewers open:
one ``vertex`` element of float32 ``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0
scale_1 scale_2 rot_0 rot_1 rot_2 rot_3``, binary little endian, with
``f_dc = (rgb - 0.5) / C0`` (C0 = 0.28209479177387814, the degree-0 spherical harmonic),
opacity as a logit, scales as logs and the rotation as a wxyz quaternion (identity here).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.files import write_bytes
from pipeline.data.schema import non_finite
from taichi_sim.errors import SgausError

SH_C0 = 0.28209479177387814
PLY_FIELDS = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


@dataclass
class Gaussians:
    """N Gaussians; see the module docstring for what each field stores."""

    means: torch.Tensor  # [N,3]
    log_scales: torch.Tensor  # [N] isotropic, or [N,3] axis-aligned
    colors: torch.Tensor  # [N,3] RGB in [0,1]
    opacity_logits: torch.Tensor  # [N]

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise SgausError(f"Gaussians: means must be [N,3], got {list(self.means.shape)}")
        if self.log_scales.shape not in ((n,), (n, 3)):
            raise SgausError(f"Gaussians: log_scales must be [N] or [N,3] with N={n}, got {list(self.log_scales.shape)}")
        if self.colors.shape != (n, 3):
            raise SgausError(f"Gaussians: colors must be [N,3] with N={n}, got {list(self.colors.shape)}")
        if self.opacity_logits.shape != (n,):
            raise SgausError(f"Gaussians: opacity_logits must be [N] with N={n}, got {list(self.opacity_logits.shape)}")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def isotropic(self) -> bool:
        return self.log_scales.ndim == 1

    def scales(self) -> torch.Tensor:
        """Standard deviations [N] (or [N,3]) in world units."""
        return self.log_scales.exp()

    def opacities(self) -> torch.Tensor:
        """Opacities [N] in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    def rgb(self) -> torch.Tensor:
        """Colours [N,3] in [0, 1]."""
        return self.colors.clamp(0.0, 1.0)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.means, self.log_scales, self.colors, self.opacity_logits

    def detach_clone(self) -> "Gaussians":
        """A copy sharing no storage and no autograd history with this one."""
        return Gaussians(*(t.detach().clone() for t in self.tensors()))

    def subset(self, index) -> "Gaussians":
        """The Gaussians selected by a boolean mask [N] or an index tensor/list (detached copies)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool and index.shape != (len(self),):
            raise SgausError(f"Gaussians.subset: a mask must be [N] with N={len(self)}, got {list(index.shape)}")
        return Gaussians(*(t.detach()[index].clone() for t in self.tensors()))

    def to(self, dtype=None, device=None) -> "Gaussians":
        return Gaussians(*(t.to(dtype=dtype, device=device) for t in self.tensors()))

    def render(self, cams, means: torch.Tensor | None = None, background=None) -> torch.Tensor:
        """RGB renders [C,H,W,3] of these Gaussians placed at ``means`` [N,3] (default: their own
        centres) seen by ``cams`` (pipeline.data.cameras.Cameras), on black unless ``background``."""
        return self.render_with_alpha(cams, means, background)[0]

    def render_with_alpha(self, cams, means: torch.Tensor | None = None, background=None):
        """(RGB [C,H,W,3], alpha [C,H,W,1]) of :meth:`render`."""
        rgb, alpha, _depth = self.render_full(cams, means, background)
        return rgb, alpha

    def render_full(self, cams, means: torch.Tensor | None = None, background=None):
        """(RGB [C,H,W,3], alpha [C,H,W,1], depth [C,H,W,1]) of :meth:`render`; depth is the
        expected camera-space z where alpha > 0 (render.rasterization)."""
        from render import rasterization

        return rasterization(self.means if means is None else means, self.scales(), self.opacities(), self.rgb(),
                             cams.viewmats, cams.Ks, cams.width, cams.height, background=background)


# ----------------------------------------------------------------------------- PLY
def _ply_header(n: int, names) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {name}" for name in names]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def save_ply(path, g: Gaussians) -> Path:
    """Write ``g`` as a 3DGS PLY file (atomically). Isotropic Gaussians get three equal log
    scales; every rotation is the identity quaternion (1, 0, 0, 0)."""
    n = len(g)
    table = np.zeros(n, dtype=[(name, "<f4") for name in PLY_FIELDS])
    means = g.means.detach().cpu().to(torch.float64).numpy()
    log_s = g.log_scales.detach().cpu().to(torch.float64).numpy()
    if log_s.ndim == 1:
        log_s = np.repeat(log_s[:, None], 3, axis=1)
    rgb = g.colors.detach().cpu().to(torch.float64).numpy()
    f_dc = (rgb - 0.5) / SH_C0
    for i, axis in enumerate("xyz"):
        table[axis] = means[:, i]
    for i in range(3):
        table[f"f_dc_{i}"] = f_dc[:, i]
        table[f"scale_{i}"] = log_s[:, i]
    table["opacity"] = g.opacity_logits.detach().cpu().to(torch.float64).numpy()
    table["rot_0"] = 1.0
    return write_bytes(path, _ply_header(n, PLY_FIELDS) + table.tobytes())


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _read_header(path: Path, data: bytes) -> tuple[int, np.dtype, int]:
    """Parse the header: (vertex count, vertex dtype, offset of the vertex data)."""
    if not data.startswith(b"ply\n") and not data.startswith(b"ply\r\n"):
        raise SgausError(f"{path}: not a PLY file (no 'ply' magic line)")
    end = data.find(b"end_header")
    if end < 0:
        raise SgausError(f"{path}: malformed PLY header (no end_header)")
    offset = data.find(b"\n", end) + 1
    try:
        lines = data[:end].decode("ascii").split("\n")[1:]
    except UnicodeDecodeError:
        raise SgausError(f"{path}: malformed PLY header (not ASCII)") from None
    fmt, n, fields, element = None, None, [], None
    for line in (ln.strip() for ln in lines):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1:]
        elif words[0] == "element":
            if len(words) != 3:
                raise SgausError(f"{path}: malformed PLY header line {line!r}")
            if element is None and words[1] != "vertex":
                raise SgausError(f"{path}: the first PLY element must be 'vertex', got {words[1]!r}")
            element = words[1]
            if element == "vertex":
                try:
                    n = int(words[2])
                except ValueError:
                    raise SgausError(f"{path}: malformed vertex count {words[2]!r}") from None
        elif words[0] == "property":
            if element != "vertex":
                continue
            if len(words) != 3 or words[1] == "list":
                raise SgausError(f"{path}: unsupported vertex property {line!r}")
            if words[1] not in _PLY_TYPES:
                raise SgausError(f"{path}: unknown PLY type {words[1]!r}")
            fields.append((words[2], "<" + _PLY_TYPES[words[1]]))
        else:
            raise SgausError(f"{path}: malformed PLY header line {line!r}")
    if fmt != ["binary_little_endian", "1.0"]:
        raise SgausError(f"{path}: only binary little-endian PLY files are read, got format {' '.join(fmt or ['?'])}")
    if n is None or n < 0:
        raise SgausError(f"{path}: PLY file without a vertex element")
    try:
        dtype = np.dtype(fields)
    except ValueError:
        raise SgausError(f"{path}: duplicate vertex property names") from None
    return n, dtype, offset


def load_ply(path) -> Gaussians:
    """Read a 3DGS PLY file (as :func:`save_ply` writes, or from other 3DGS tools: higher SH
    bands and extra properties are ignored). Three equal log scales load as isotropic [N]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    data = path.read_bytes()
    n, dtype, offset = _read_header(path, data)
    needed = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0")
    missing = [name for name in needed if name not in dtype.names]
    if missing:
        raise SgausError(f"{path}: not a 3DGS PLY file (missing vertex properties {', '.join(missing)})")
    if len(data) - offset < n * dtype.itemsize:
        raise SgausError(f"{path}: truncated PLY file ({len(data) - offset} bytes of vertex data, "
                         f"{n * dtype.itemsize} expected)")
    table = np.frombuffer(data, dtype=dtype, count=n, offset=offset)

    def col(*names) -> torch.Tensor:
        return torch.from_numpy(np.stack([table[k].astype(np.float32) for k in names], axis=-1).copy())

    means = col("x", "y", "z")
    f_dc = col("f_dc_0", "f_dc_1", "f_dc_2").double()
    colors = (f_dc * SH_C0 + 0.5).float()
    opacity = col("opacity")[:, 0]
    if all(f"scale_{i}" in dtype.names for i in (1, 2)):
        log_s = col("scale_0", "scale_1", "scale_2")
        if torch.equal(log_s[:, 0], log_s[:, 1]) and torch.equal(log_s[:, 0], log_s[:, 2]):
            log_s = log_s[:, 0].clone()
        elif all(f"rot_{i}" in dtype.names for i in range(4)):
            q = col("rot_0", "rot_1", "rot_2", "rot_3").double()
            q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
            if not torch.all(q[:, 0].abs() > 1 - 1e-6):
                raise SgausError(f"{path}: rotated anisotropic Gaussians are not supported (rot is not the identity)")
    else:
        log_s = col("scale_0")[:, 0]
    for name, t in (("position", means), ("scale", log_s), ("colour", colors), ("opacity", opacity)):
        bad = non_finite(t.numpy(), "Gaussian")
        if bad:
            raise SgausError(f"{path}: the {name} holds {bad}")
    return Gaussians(means=means, log_scales=log_s, colors=colors, opacity_logits=opacity)
