"""Gaussians container and 3DGS PLY files: exact round trips, the INRIA header, clear errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.data.gaussians import PLY_FIELDS, SH_C0, Gaussians, load_ply, save_ply


def _random(n=257, anisotropic=False, seed=0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen),
        log_scales=torch.randn((n, 3) if anisotropic else (n,), generator=gen) - 4,
        colors=torch.rand(n, 3, generator=gen),
        opacity_logits=3 * torch.randn(n, generator=gen),
    )


def test_accessors_and_subset():
    g = _random(10)
    torch.testing.assert_close(g.scales(), g.log_scales.exp())
    torch.testing.assert_close(g.opacities(), 1 / (1 + torch.exp(-g.opacity_logits)))
    g.colors[0] = torch.tensor([-0.5, 0.5, 1.5])
    assert g.rgb()[0].tolist() == [0.0, 0.5, 1.0]
    assert len(g) == 10 and len(g.subset(g.opacity_logits > 0)) == int((g.opacity_logits > 0).sum())
    sub = g.subset([3, 1])
    assert torch.equal(sub.means, g.means[[3, 1]])
    c = g.detach_clone()
    c.means += 1
    assert not torch.equal(c.means, g.means)
    with pytest.raises(ValueError, match="colors must be"):
        Gaussians(g.means, g.log_scales, g.colors[:5], g.opacity_logits)


def test_ply_header_is_the_3dgs_layout(tmp_path):
    g = _random(5)
    path = save_ply(tmp_path / "g.ply", g)
    data = path.read_bytes()
    header, body = data.split(b"end_header\n")
    lines = header.decode().splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 5"]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert lines[3:] == [f"property float {n}" for n in names]
    assert len(body) == 5 * 17 * 4
    table = np.frombuffer(body, dtype=[(n, "<f4") for n in names])
    np.testing.assert_array_equal(table["scale_1"], g.log_scales.numpy())  # isotropic: three equal logs
    np.testing.assert_array_equal(table["scale_2"], g.log_scales.numpy())
    np.testing.assert_array_equal(table["rot_0"], 1.0)
    assert not table["rot_1"].any() and not table["nx"].any()
    np.testing.assert_allclose(table["f_dc_1"], (g.colors[:, 1].numpy() - 0.5) / SH_C0, rtol=1e-6)
    np.testing.assert_array_equal(table["opacity"], g.opacity_logits.numpy())


@pytest.mark.parametrize("anisotropic", [False, True])
def test_ply_round_trip_is_exact(tmp_path, anisotropic):
    g = _random(anisotropic=anisotropic)
    save_ply(tmp_path / "a.ply", g)
    back = load_ply(tmp_path / "a.ply")
    assert back.isotropic == (not anisotropic)
    for name in ("means", "log_scales", "opacity_logits"):  # stored as they are: bitwise
        assert getattr(back, name).dtype == torch.float32
        assert torch.equal(getattr(back, name), getattr(g, name)), name
    # colours pass through f_dc = (rgb - 0.5) / C0: equal to within one float32 step
    torch.testing.assert_close(back.colors, g.colors, atol=6e-8, rtol=0)
    # and a file read and written again is the same file, bit for bit
    save_ply(tmp_path / "b.ply", back)
    assert (tmp_path / "a.ply").read_bytes() == (tmp_path / "b.ply").read_bytes()


def test_ply_f64_input_and_extra_properties(tmp_path):
    g = _random(4).to(dtype=torch.float64)
    save_ply(tmp_path / "g.ply", g)
    back = load_ply(tmp_path / "g.ply")
    torch.testing.assert_close(back.means.double(), g.means, atol=1e-6, rtol=1e-6)
    # a 3DGS file with SH bands and a property order of its own reads too
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "f_rest_0", "opacity", "scale_0", "scale_1",
             "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    table = np.zeros(2, dtype=[(n, "<f4") for n in names])
    table["x"] = [1, 2]
    table["scale_0"] = [-3, -4]
    table["scale_1"] = [-3, -5]
    table["scale_2"] = [-3, -6]
    table["rot_0"] = 2.0  # unnormalised identity
    header = "ply\nformat binary_little_endian 1.0\ncomment made elsewhere\nelement vertex 2\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    (tmp_path / "other.ply").write_bytes(header.encode() + table.tobytes())
    other = load_ply(tmp_path / "other.ply")
    assert other.log_scales.shape == (2, 3) and other.means[:, 0].tolist() == [1, 2]
    assert other.rgb()[0].tolist() == [0.5, 0.5, 0.5]


def test_ply_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="PLY file not found"):
        load_ply(tmp_path / "none.ply")
    save_ply(tmp_path / "g.ply", _random(8))
    data = (tmp_path / "g.ply").read_bytes()
    (tmp_path / "short.ply").write_bytes(data[:-5])
    with pytest.raises(ValueError, match="short.ply: truncated PLY file"):
        load_ply(tmp_path / "short.ply")
    (tmp_path / "text.ply").write_bytes(data.replace(b"binary_little_endian", b"ascii"))
    with pytest.raises(ValueError, match="text.ply: only binary little-endian"):
        load_ply(tmp_path / "text.ply")
    (tmp_path / "junk.ply").write_bytes(b"hello")
    with pytest.raises(ValueError, match="junk.ply: not a PLY file"):
        load_ply(tmp_path / "junk.ply")
    (tmp_path / "mesh.ply").write_bytes(data.replace(b"f_dc_0", b"red_00"))
    with pytest.raises(ValueError, match="mesh.ply: not a 3DGS PLY file .*f_dc_0"):
        load_ply(tmp_path / "mesh.ply")
    save_ply(tmp_path / "aniso.ply", _random(8, anisotropic=True))
    header, body = (tmp_path / "aniso.ply").read_bytes().split(b"end_header\n")
    table = np.frombuffer(body, dtype=[(n, "<f4") for n in PLY_FIELDS]).copy()
    table["rot_1"] = 0.5  # a real rotation: not representable by axis-aligned Gaussians
    (tmp_path / "rot.ply").write_bytes(header + b"end_header\n" + table.tobytes())
    with pytest.raises(ValueError, match="rot.ply: rotated anisotropic"):
        load_ply(tmp_path / "rot.ply")


def test_opacity_and_scale_are_logit_and_log(tmp_path):
    g = Gaussians(torch.zeros(1, 3), torch.tensor([math.log(0.003)]), torch.tensor([[1.0, 0.0, 0.25]]),
                  torch.tensor([0.0]))
    save_ply(tmp_path / "g.ply", g)
    back = load_ply(tmp_path / "g.ply")
    assert back.opacities().item() == pytest.approx(0.5)
    assert back.scales().item() == pytest.approx(0.003)
    torch.testing.assert_close(back.rgb(), torch.tensor([[1.0, 0.0, 0.25]]))
