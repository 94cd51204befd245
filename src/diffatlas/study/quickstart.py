"""The quickstart study, embedded so that `diffatlas quickstart` works from an installed package.
The same text ships as studies/quickstart.yaml (a test checks they agree)."""

from __future__ import annotations

import yaml

from .spec import Study, study_from_dict

QUICKSTART_YAML = """\
# The quickstart study: DDPM vs NCSN on the bundled scikit-learn digits (8x8), two noise
# schedules each, two samplers, two seeds, evaluated with the digits classifier.
# Knobs that set its cost: budget_kimg (training length per run), evaluation.n (samples per
# metric), evaluation.every_kimg (evaluated snapshots per run), network.preset and the seeds.
name: quickstart
description: DDPM vs NCSN on 8x8 digits, two schedules each, two samplers, two seeds
base:
  data: {name: digits}
  network: {preset: unet-xs}
  train: {batch: 64, lr: 1.0e-3, warmup_kimg: 1.0, ema_halflife_kimg: 2.0, tick_kimg: 2.0, doctor: false}
axes:
  - variants:
      - {dynamics.name: ddpm, dynamics.steps: 200, dynamics.schedule: linear}
      - {dynamics.name: ddpm, dynamics.steps: 200, dynamics.schedule: cosine}
      - {dynamics.name: ncsn, dynamics.levels: 10, dynamics.sigma_max: 1.0}   # Song & Ermon 2019 levels
      - {dynamics.name: ncsn, dynamics.levels: 25, dynamics.sigma_max: 10.0}  # NCSNv2-style: sigma_max ~ data diameter
seeds: [0, 1]
budget_kimg: 24
evaluation:
  metrics: [fid, is]
  n: 1000
  every_kimg: 6
  extractor: classifier
  # Both samplers on the processes' own discrete steps, respaced evenly to 10 (NCSN's 10 levels
  # exactly), x0 clipped to [-1, 1] (the default for images). With the exact denoiser of a 2-D
  # mixture these settings tie: sliced W2 ancestral/ddim 0.068/0.055 (DDPM linear), 0.075/0.059
  # (cosine), 0.072/0.078 (NCSN 10 levels), 0.088/0.072 (NCSN 25), noise floor 0.014; the default
  # log-SNR grid would give cosine DDPM 0.158/0.124 here (its range reaches sigma_hat ~ 4000).
  samplers:
    - {sampler: ancestral, steps: 10, grid: discrete}
    - {sampler: ddim, steps: 10, grid: discrete}
"""


def quickstart_study() -> Study:
    return study_from_dict(yaml.safe_load(QUICKSTART_YAML), source="quickstart")
