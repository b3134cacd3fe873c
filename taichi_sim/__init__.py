"""Differentiable physics in Taichi: the spring-mass simulator and the MLS-MPM generator.

taichi_sim.runtime is imported first: it sets Taichi's environment defaults before Taichi itself
is imported by any module of the project."""
from taichi_sim import runtime  # noqa: F401
