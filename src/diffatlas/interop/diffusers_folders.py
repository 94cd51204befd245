"""Reading diffusers folders and checking a run against a UNet2DModel: what import and export share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import UserError

EXPORT_INFO = "diffatlas_export.json"
SOURCE_INFO = "source.json"
LogFn = Callable[[str], Any]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what}: {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{what}: {str(path)!r} is not a readable JSON file") from None
    if not isinstance(data, dict):
        raise UserError(f"{what}: {str(path)!r} does not hold a JSON object")
    return data


def _load_unet_weights(folder: Path) -> dict[str, Tensor]:
    """The UNet's state_dict from diffusion_pytorch_model.safetensors (or a .bin loaded weights-only)."""
    st, binary = folder / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file
            return load_file(str(st))
        if binary.is_file():
            return torch.load(binary, map_location="cpu", weights_only=True)
    except Exception:
        raise UserError(f"the UNet weights in {str(folder)!r} are not readable (a corrupt file, or more than tensors)") from None
    raise UserError(f"{str(folder)!r} holds no diffusion_pytorch_model.safetensors (or .bin); sharded or variant weights "
                    "are not supported")


def _fresh_target(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{what} {str(path)!r} already exists and is not empty; nothing was written")


def check_against_unet(denoiser: Any, unet: nn.Module, steps: list[int], times: Tensor,
                       shape: tuple[int, ...], seed: int = 0) -> float:
    """max |network output of the run's denoiser at the time of timestep k - UNet2DModel output at k| over two
    random inputs and the given timesteps (times: the dynamics' time of each). Both are the model's eps, v or
    x0 prediction of x_t (sigma_data = 1: the denoiser hands its network x_t): what import and export state."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *shape), generator=g)
    worst = 0.0
    with torch.no_grad():
        for k, t in zip(steps, times.tolist()):
            ref = unet(x, torch.full((2,), k, dtype=torch.long)).sample
            out = denoiser.network_output(x, torch.full((2,), t))[0]
            worst = max(worst, float((out - ref).abs().max()))
    return worst
