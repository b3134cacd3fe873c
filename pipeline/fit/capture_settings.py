"""The settings a real capture's fit adds (pipeline/fit/capture_fit.py), gathered from FitSettings'
``capture_*``, ``registration_*`` and ``vgg_weights`` fields into one dataclass, which is part of the
registration's and the dynamic stage's cache keys whole (so none can be forgotten in a key)."""
from __future__ import annotations

from dataclasses import dataclass

from taichi_sim.errors import SgausError


@dataclass(frozen=True)
class CaptureSettings:
    """image_size: longest side the capture is prepared at (0: as recorded); registration_iterations,
    registration_hypotheses: the registration's final Adam steps and random rotations; lambda_dssim,
    lambda_center, lambda_percep: Eq. 19's weights; vgg_weights: a vgg16 state dict ("" = none)."""

    image_size: int = 640
    registration_iterations: int = 100
    registration_hypotheses: int = 48
    lambda_dssim: float = 0.8
    lambda_center: float = 1.0
    lambda_percep: float = 0.1
    vgg_weights: str = ""

    def validate(self) -> "CaptureSettings":
        if self.image_size < 0 or self.registration_iterations <= 0 or self.registration_hypotheses < 0:
            raise SgausError("capture_image_size must be >= 0, registration_iterations positive and "
                             "registration_hypotheses >= 0")
        if not 0.0 <= self.lambda_dssim <= 1.0 or self.lambda_center < 0 or self.lambda_percep < 0:
            raise SgausError("capture_lambda_dssim must lie in [0, 1] and the other capture weights be >= 0")
        return self


def capture_settings(fit) -> CaptureSettings:
    """The CaptureSettings of a FitSettings (not validated: call ``validate()``)."""
    return CaptureSettings(fit.capture_image_size, fit.registration_iterations, fit.registration_hypotheses,
                           fit.capture_lambda_dssim, fit.capture_lambda_center, fit.capture_lambda_percep,
                           fit.vgg_weights)
