"""`diffatlas sample` as a library call (draw.draw_samples): the files it writes hold the samples of
the seeds asked for, with their seeds, labels and setting; bad requests fail before any file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from diffatlas.draw import draw_samples
from diffatlas.errors import UserError
from diffatlas.sampling import sample_run


def test_files_hold_the_seeds_samples(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    res = draw_samples(run, n=6, seed=40, sampler="ddim", steps=3, device="cpu")
    assert res["png"] == run / "samples" / f"{res['snapshot']}-ddim-3-seed40.png" and res["png"].read_bytes()[:4] == b"\x89PNG"
    saved = np.load(res["npz"])
    assert saved["seeds"].tolist() == list(range(40, 46)) and saved["labels"].size == 0
    same = sample_run(run, n=6, seed=40, sampler="ddim", steps=3)["x"]
    np.testing.assert_array_equal(saved["samples"], same.numpy())
    meta = json.loads(res["json"].read_text())
    assert meta["n"] == 6 and meta["sampler"] == "ddim" and meta["steps"] == 3 and meta["nfe"] == 3
    guided = draw_samples(run, n=4, seed=0, sampler="ddim", steps=3, klass=2, guidance="classifier:1",
                          classifier="untrained:0", out=tmp_path / "g.png", device="cpu")
    assert np.load(guided["npz"])["labels"].tolist() == [2, 2, 2, 2] and guided["png"] == tmp_path / "g.png"


@pytest.mark.parametrize("kw, match", [({"steps": 3, "nfe": 3}, "not both"), ({"clip": "bogus"}, "clip"),
                                       ({"n": 10, "seed": 2**32 - 5}, "seed")])
def test_bad_requests_write_nothing(tiny_run, tmp_path, kw, match):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    with pytest.raises(UserError, match=match):
        draw_samples(run, **{"n": 2, **kw}, device="cpu")
    assert not (run / "samples").exists()
