"""Models in and out of other ecosystems: diffusers folders as runs, runs as diffusers folders."""

from .diffusers_io import (diffusers_grid, diffusers_timesteps, export_diffusers, import_diffusers, read_scheduler,
                           unet_to_diffusers)

__all__ = ["diffusers_grid", "diffusers_timesteps", "export_diffusers", "import_diffusers", "read_scheduler",
           "unet_to_diffusers"]
