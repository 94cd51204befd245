"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waiting, which on a loaded machine made
    microsecond ops take milliseconds. Modules opt in with pytestmark = usefixtures("one_thread")."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A tiny digits run: DDPM with 50 steps, 7 training steps of batch 32, snapshots at kimg 0.096 and 0.224.
TINY_RUN = ["network.preset=unet-xs", "network.dropout=0.0", "train.batch=32", "train.kimg=0.2",
            "train.tick_kimg=0.1", "train.snapshot_kimg=0.1", "train.warmup_kimg=0.1", "train.doctor=false",
            "train.device=cpu", "dynamics.steps=50"]


@pytest.fixture(scope="module")
def tiny_overrides() -> list[str]:
    return list(TINY_RUN)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_overrides):
    """The tiny run, trained once per test module that asks for it."""
    from diffatlas.config import load_config
    from diffatlas.train import train

    d = tmp_path_factory.mktemp("run") / "run"
    torch.set_num_threads(2)
    train(load_config(None, tiny_overrides), d, progress=False, log=lambda *_: None)
    return d
