"""Whether a spring-mass object turns inside out: the share of its local tetrahedra inverted.

Springs only see distances, and a region mirrored through itself has the same distances as the
region at rest: a soft spring-mass object that is squashed hard can fold through itself and stay
folded, a flat pancake whose springs are barely strained, where an elastic solid (the MPM truth,
whose energy grows without bound as a volume goes to zero) springs back. Measured on the soft pawn
thrown onto the ground, the fits that lost to "hold" had 2.5 to 6.1 % of these tetrahedra
inverted on average over the fitted frames (up to 16 % in one frame), the ones that beat it at
most 0.2 % (2 % in one frame at the impact; README: the fit, stage 5).

Every anchor gets one tetrahedron: itself and the three of its nearest springs' ends that make the
best-shaped one at rest (the largest |det| of the three edges over the product of their lengths).
That determinant over its value at rest, J, is kept by any rotation and is negative once the
tetrahedron has inverted, so the share of tetrahedra with J < 0 says how much of the object is
folded, whatever its pose. Crushing alone does not count: a soft spring-mass model may be squashed
almost flat for a frame at the impact and spring back (J near 0, not below), and a model crushed
into a sheet on the ground (J = 0) looks like no object at all, which the images already say.
"""
from __future__ import annotations

import itertools

import torch

from taichi_sim.errors import SgausError

CANDIDATES = 8  # nearest springs' ends among which each anchor's tetrahedron is chosen


def local_tetrahedra(rest: torch.Tensor, neighbors: torch.Tensor, candidates: int = CANDIDATES) -> torch.Tensor:
    """One tetrahedron per anchor [N,4] (the anchor, then three of its first ``candidates``
    neighbours) from the rest positions [N,3] and the nearest-first neighbour lists [N,K]."""
    if rest.dim() != 2 or rest.shape[1] != 3 or neighbors.dim() != 2 or neighbors.shape[0] != rest.shape[0]:
        raise SgausError(f"local tetrahedra need rest positions [N,3] and neighbours [N,K], got "
                         f"{list(rest.shape)} and {list(neighbors.shape)}")
    m = min(int(candidates), neighbors.shape[1])
    if m < 3:
        raise SgausError(f"local tetrahedra need at least 3 springs per anchor, got {neighbors.shape[1]}")
    x = rest.detach().double()
    nb = neighbors[:, :m].long()
    triples = torch.tensor(list(itertools.combinations(range(m), 3)), dtype=torch.long)  # [C,3]
    edges = (x[nb] - x[:, None])[:, triples]  # [N,C,3 edges,3]
    quality = torch.linalg.det(edges).abs() / edges.norm(dim=-1).prod(-1).clamp_min(1e-30)
    best = triples[quality.argmax(1)]  # [N,3]
    return torch.cat([torch.arange(len(x))[:, None], nb.gather(1, best)], 1)


def signed_volumes(positions: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """Six times the signed volume of each tetrahedron, for positions [..., N, 3]: [..., T]."""
    x = positions.double()
    a = x[..., tets[:, 0], :]
    edges = torch.stack([x[..., tets[:, i], :] - a for i in (1, 2, 3)], -2)
    return torch.linalg.det(edges)


def folded_fraction(positions: torch.Tensor, rest: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    """The share of the tetrahedra ``tets`` inverted against ``rest`` in every frame of
    ``positions`` [F,N,3] (or one frame [N,3]): [F] (or a scalar); 0 at rest, under any rotation
    and any squash short of inversion, 1 for a mirror image."""
    if positions.shape[-2:] != rest.shape:
        raise SgausError(f"positions {list(positions.shape)} do not match the rest anchors {list(rest.shape)}")
    return (signed_volumes(positions, tets) * signed_volumes(rest, tets) < 0).double().mean(-1)


__all__ = ["local_tetrahedra", "signed_volumes", "folded_fraction"]
