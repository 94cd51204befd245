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
  # Both samplers on the processes' own discrete steps, respaced to 10 (NCSN's 10 levels exactly),
  # so every network is only ever evaluated at noise levels it was trained on.
  samplers:
    - {sampler: ancestral, steps: 10}
    - {sampler: ddim, steps: 10}
"""


def quickstart_study() -> Study:
    return study_from_dict(yaml.safe_load(QUICKSTART_YAML), source="quickstart")
