"""Binding of Gaussian centres to anchors (Eq. 15)."""
import pytest
import torch

from taichi_sim.binding import Binding, apply_binding, compute_binding

F64 = torch.float64


def _points(n, seed):
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_weights_are_inverse_distance_and_sum_to_one():
    anchors, pts = _points(40, 0), _points(25, 1)
    b = compute_binding(pts, anchors, n_b=6, p_b=0.5)
    assert b.index.shape == (25, 6) and b.index.dtype == torch.int64 and b.weight.dtype == F64
    assert torch.allclose(b.weight.sum(1), torch.ones(25, dtype=F64), atol=1e-12)
    d = (pts[:, None] - anchors[b.index]).norm(dim=-1)
    expected = d ** -0.5 / (d ** -0.5).sum(1, keepdim=True)
    assert torch.allclose(b.weight, expected, atol=1e-12)
    brute = torch.cdist(pts, anchors).topk(6, largest=False).indices
    assert torch.equal(b.index.sort(1).values, brute.sort(1).values)


def test_gaussian_on_an_anchor_follows_it():
    anchors = _points(30, 2)
    pts = torch.cat([anchors[7:8], _points(3, 3)])
    b = compute_binding(pts, anchors, n_b=16, p_b=0.5)
    assert torch.isfinite(b.weight).all()
    moved = anchors + torch.randn(30, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    assert torch.allclose(apply_binding(b, moved)[0], moved[7], atol=1e-12)


def test_rigid_translation_moves_points_along():
    anchors, pts = _points(50, 5), _points(20, 6)
    b = compute_binding(pts, anchors)
    shift = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    frames = torch.stack([anchors, anchors + shift])  # [..., N, 3] with a leading frame axis
    out = apply_binding(b, frames)
    assert out.shape == (2, 20, 3)
    assert torch.allclose(out[1] - out[0], shift.expand(20, 3), atol=1e-12)


def test_n_b_clipped_to_anchor_count_and_differentiable():
    anchors, pts = _points(5, 7), _points(4, 8)
    b = compute_binding(pts, anchors, n_b=16)
    assert b.index.shape == (4, 5)
    a = anchors.clone().requires_grad_(True)
    apply_binding(b, a).sum().backward()
    assert torch.allclose(a.grad.sum(0), torch.full((3,), 4.0, dtype=F64), atol=1e-12)  # each row sums to 1


def test_bad_binding_input():
    anchors, pts = _points(5, 9), _points(4, 10)
    with pytest.raises(ValueError, match="points"):
        compute_binding(pts[:, :2], anchors)
    with pytest.raises(ValueError, match="n_b"):
        compute_binding(pts, anchors, n_b=0)
    with pytest.raises(ValueError, match="empty"):
        compute_binding(pts, anchors[:0])
    b = compute_binding(pts, anchors)
    with pytest.raises(ValueError, match="anchor"):
        apply_binding(b, anchors[:3])
    with pytest.raises(ValueError, match=r"\[\.\.\., N, 3\]"):
        apply_binding(Binding(b.index, b.weight), anchors[:, :2])
