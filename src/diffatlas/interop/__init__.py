"""Models in and out of other ecosystems: diffusers folders as runs, runs as diffusers folders."""

from .diffusers_export import export_diffusers, unet_to_diffusers
from .diffusers_import import import_diffusers
from .diffusers_scheduler import diffusers_grid, diffusers_timesteps, read_scheduler

__all__ = ["diffusers_grid", "diffusers_timesteps", "export_diffusers", "import_diffusers", "read_scheduler",
           "unet_to_diffusers"]
