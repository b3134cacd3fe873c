"""Differentiable physics in Taichi: the spring-mass simulator and the MLS-MPM generator."""
import os

os.environ.setdefault("TI_SKIP_VERSION_CHECK", "on")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")
