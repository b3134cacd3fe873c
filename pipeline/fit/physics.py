"""What the velocity and dynamic stages share: the scene facts the fit takes as known, the
physical constants and starting values of the spring-mass model, and the model built from them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.data.anchors import Anchors
from taichi_sim.spring_model import SpringModel
from taichi_sim.spring_params import SpringParams


@dataclass(frozen=True)
class SceneFacts:
    """What the fit takes as known: gravity, the ground plane (unit normal), the time between
    frames, how many frames are fitted, the first ground contact (None: detect it) and the length
    of the video."""

    gravity: tuple
    ground_point: tuple | None
    ground_normal: tuple
    frame_dt: float
    fit_frames: int
    contact_frame: int | None
    n_frames: int


@dataclass(frozen=True)
class PhysicsSettings:
    """Constants of the spring-mass model and the starting point of the learned physics.

    n_c: neighbours with soft-vector weight 1 (Eq. 8); p_k, force_law: the force law (Eq. 9);
    zeta0: damping (Eq. 17); mass: per anchor; friction_mode: "per_substep" (the authors') or
    "per_time" (taichi_sim.spring_model); spring_stiffness: "anchor" (each anchor's own k, the
    authors') or "pair" (sqrt(k_i k_j) per spring, taichi_sim.spring_model); springs: "directed" (the
    authors') or "mirrored" (each spring acts on both ends, taichi_sim.spring_model); contact:
    "projection" (the authors' ground) or "penalty" (a damped stiff spring, taichi_sim.spring_model)
    and, for the penalty, contact_time (s) and the starting restitution init_restitution (the global
    search fits it); contact_floor: "uniform" or "flat" (taichi_sim.spring_model);
    init_log_stiffness, init_kappa, init_friction_logit: starting log10 k, kappa and
    phi; soft_vector: False gives every spring weight 1 (Table 3).
    """

    n_c: int = 16
    p_k: float = 0.5
    force_law: str = "smooth"
    zeta0: float = 0.1
    mass: float = 1.0
    friction_mode: str = "per_substep"
    spring_stiffness: str = "anchor"
    init_log_stiffness: float = 3.0
    init_kappa: float = 0.0
    init_friction_logit: float = -1.0
    soft_vector: bool = True
    springs: str = "directed"
    contact: str = "projection"
    contact_time: float = 0.005
    init_restitution: float = 0.5
    contact_floor: str = "uniform"

    def initial_params(self, n_anchors: int) -> SpringParams:
        """One stiffness for every anchor; without the soft vector softplus(kappa) -> 0 (Eq. 8)."""
        return SpringParams.uniform(n_anchors, self.init_log_stiffness,
                                    self.init_kappa if self.soft_vector else -40.0, self.init_friction_logit,
                                    dtype=torch.float32)


def spring_model(anchors: Anchors, facts: SceneFacts, physics: PhysicsSettings) -> SpringModel:
    """The frozen model of the fit's anchors and springs in the scene (kernel tables built once)."""
    model = SpringModel(anchors.rest_positions, anchors.neighbors, anchors.rest_length, mass=physics.mass,
                        gravity=facts.gravity, ground_point=facts.ground_point, ground_normal=facts.ground_normal,
                        force_law=physics.force_law, p_k=physics.p_k, zeta0=physics.zeta0, n_c=physics.n_c,
                        friction_mode=physics.friction_mode, spring_stiffness=physics.spring_stiffness,
                        springs=physics.springs, contact=physics.contact, contact_time=physics.contact_time,
                        restitution=physics.init_restitution, contact_floor=physics.contact_floor)
    model.kernel_topology(anchors.rest_positions.device)
    return model
