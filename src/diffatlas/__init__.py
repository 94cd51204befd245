"""diffatlas: controlled, reproducible comparative studies of diffusion models."""

__version__ = "0.1.0"
