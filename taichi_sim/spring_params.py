"""The learned physics of the spring-mass simulator and its maps to physical values.

:class:`SpringParams` holds what the dynamic stage optimises: one log10 stiffness per anchor
(Eq. 16: k_ij = 10^k_i / L0_ij), the soft-vector parameter kappa (Eq. 8) and the ground friction
logit phi (Eq. 14). The maps are differentiable torch functions: :func:`soft_vector`,
:func:`friction_from_logit` and its inverse :func:`friction_logit`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from taichi_sim.errors import SgausError


# float32 holds up to 3.4e38: a larger stiffness 10^k is infinite in the simulation
MAX_LOG_STIFFNESS = 38.0


@dataclass
class SpringParams:
    """log_stiffness [N] (log10 k_i, Eq. 16); kappa [] (Eq. 8); friction_logit [] (phi, Eq. 14)."""

    log_stiffness: torch.Tensor
    kappa: torch.Tensor
    friction_logit: torch.Tensor

    @classmethod
    def uniform(cls, n_anchors: int, log_stiffness: float = 3.0, kappa: float = 0.0, friction_logit: float = -1.0,
                dtype=torch.float32) -> "SpringParams":
        """One stiffness for every anchor (the starting point of a fit)."""
        return cls(torch.full((int(n_anchors),), float(log_stiffness), dtype=dtype),
                   torch.tensor(float(kappa), dtype=dtype), torch.tensor(float(friction_logit), dtype=dtype))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.log_stiffness, self.kappa, self.friction_logit

    def detach(self) -> "SpringParams":
        return SpringParams(*(t.detach().clone() for t in self.tensors()))

    def to(self, dtype) -> "SpringParams":
        return SpringParams(*(torch.as_tensor(t).to(dtype) for t in self.tensors()))

    def check_finite(self) -> None:
        """SgausError naming the first non-finite parameter (with its anchor), or a log10 stiffness
        whose stiffness 10^k no float32 simulation can hold, before any simulation runs: a rollout
        would otherwise retry with ever more substeps and only then report it unstable."""
        for name in ("log_stiffness", "kappa", "friction_logit"):
            t = torch.as_tensor(getattr(self, name)).detach().reshape(-1)
            bad = torch.nonzero(~torch.isfinite(t))
            if len(bad):
                where = f" at anchor {int(bad[0])}" if name == "log_stiffness" else ""
                raise SgausError(f"{name} holds {t[int(bad[0])].item()}{where}: a physical parameter must be a finite "
                                 "number")
        k = torch.as_tensor(self.log_stiffness).detach().reshape(-1)
        big = torch.nonzero(k > MAX_LOG_STIFFNESS)
        if len(big):
            i = int(big[0])
            raise SgausError(f"log_stiffness holds {k[i].item():g} at anchor {i}: a stiffness of 10^{k[i].item():g} "
                             f"is beyond any simulation (at most 10^{MAX_LOG_STIFFNESS:g})")


def soft_vector(kappa: torch.Tensor, k_neighbors: int, n_c: int) -> torch.Tensor:
    """Soft vector eta [K] (Eq. 8): 1 for the first n_c neighbours, then
    clamp(2 - exp(softplus(kappa) * s), 0, 1) with s = j / (K - n_c), j = 0 .. K - n_c - 1."""
    kappa = torch.as_tensor(kappa)
    if kappa.numel() != 1:
        raise SgausError(f"kappa must be a scalar, got shape {list(kappa.shape)}")
    dtype = kappa.dtype if kappa.is_floating_point() else torch.get_default_dtype()
    kappa = kappa.reshape(()).to(dtype)
    n_soft = max(int(k_neighbors) - int(n_c), 0)
    head = torch.ones(int(k_neighbors) - n_soft, dtype=dtype, device=kappa.device)
    s = torch.arange(n_soft, dtype=dtype, device=kappa.device) / max(n_soft, 1)
    tail = torch.clamp(2.0 - torch.exp(torch.nn.functional.softplus(kappa) * s), 0.0, 1.0)
    return torch.cat([head, tail])


def friction_from_logit(phi: torch.Tensor) -> torch.Tensor:
    """Ground friction factor clamp(1.2 sigmoid(phi) - 0.1, 0, 1): 1 = smooth, 0 = sticky."""
    return torch.clamp(1.2 * torch.sigmoid(phi) - 0.1, 0.0, 1.0)


def friction_logit(value: float) -> float:
    """The logit phi whose :func:`friction_from_logit` is ``value`` in [0, 1]; the ends map to
    finite logits that saturate the clamp (0 -> sticky, 1 -> smooth)."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise SgausError(f"a friction factor must lie in [0, 1], got {value}")
    s = (value + 0.1) / 1.2  # in [1/12, 11/12]: always a finite logit
    if value == 0.0:
        s = 0.05 / 1.2  # strictly below the clamp, so gradients at exactly 0 do not matter
    elif value == 1.0:
        s = 1.15 / 1.2
    return math.log(s / (1.0 - s))


__all__ = ["SpringParams", "soft_vector", "friction_from_logit", "friction_logit"]
