"""Statistics across trained models: paired comparisons, effect sizes and a verdict on each of the paper's claims.

Records
-------
The input of every function here is a plain list of dicts, one per (trained model, evaluation
setting, metric)::

    {"run": id,                       # the trained model (one seed of one configuration)
     "labels": {axis key: value, ..., "seed": s,
                "eval": "heun x18",   # the evaluation setting (sampler x steps [+ guidance])
                "guidance": "none",   # optional: guidance of the setting (an evaluation-level axis)
                "sampling": "heun x18"},  # optional: the setting without its guidance
     "metric": "fid", "final": float, "higher_is_better": bool | None,
     "converged_kimg": float | None,  # None: the curve never came within the band of its plateau
     "settled": bool,                 # the last points of the curve lie in the band (else censored)
     "budget_kimg": float,
     "draws": {"n": 500, "values": [...], "seeds": [...]}}   # optional: the same model evaluated on
                                                              # disjoint per-sample seed ranges

Labels in :data:`EVAL_LABELS` describe how a model was evaluated; every other label (the seed
included) says which model it is. A record without "run" is identified by those other labels.

The unit of evidence is the trained model
-----------------------------------------
Evaluation settings applied to one network are repeated measures of that network, not
replicates. A comparison of value a against value b of an axis therefore

1. reduces each trained model to one number: the mean of the metric over the evaluation settings
   that every compared model was evaluated with;
2. pairs models that share every other model label both sides define (the seed and any crossed
   axis); a label only one side defines (DDPM's beta schedule against NCSN) is averaged over;
   one difference per pair. For an evaluation-level axis (guidance), each model is its own pair:
   the difference between its settings with and without, matched on the sampler;
3. tests the mean difference with a paired t-test (primary; Student 1908) and checks it with
   the exact two-sided sign-flip permutation test (robustness; Good 2005, ch. 3). A direction
   is declared only when the t-test passes after the Holm correction (Holm 1979) and the sign-flip
   test passes at alpha. The sign-flip test cannot go below p = 2^(1-n) with n pairs, so fewer
   than 6 pairs (at alpha 0.05) cannot reach a verdict: such a comparison is "underpowered";
4. reports the mean difference with its t-interval (metric units), the standardized effect
   d_z = mean / sd of the differences with its exact noncentral-t interval (Cumming & Finch
   2001), and the smallest d_z the comparison detects with 80% power under its decision rule
   (:func:`detectable_dz`).

Per-setting analyses are secondary tests, Holm-corrected among themselves. The claims of a
verdict table form one Holm family (the claims whose design can reach a verdict). The operational
definition of each claim is in :data:`DEFINITIONS`; `diffatlas calibrate` runs this code on
simulated studies to measure its false-positive rate and power.

The package: :mod:`.tests` (the paired tests and their power), :mod:`.pairs` (trained models, pairs,
comparisons), :mod:`.verdict` (the claims' definitions, `Verdict`, `Effect` and the helpers every claim
shares), :mod:`.equivalence` (the convergence claim: equivalence by two one-sided tests),
:mod:`.reliability` (the IS-stability claim: ICC(1) over independent draws), :mod:`.claims` (the
other claims and `verdicts`), :mod:`.noise` (the evaluation-noise share of the seed spread).
"""

from .tests import (  # noqa: F401
    ALPHA,
    POWER,
    SIGN_FLIP_PERMS,
    TTest,
    bootstrap_ci,
    detectable_dz,
    dz_interval,
    holm,
    icc1,
    icc1_jackknife,
    min_sign_flip_p,
    paired_t,
    sign_flip_p,
)
from .pairs import (  # noqa: F401
    Comparison,
    EVAL_KEY,
    EVAL_LABELS,
    Pairing,
    all_pairwise,
    axis_effect,
    axis_values,
    compare,
    direction,
    min_pairs,
    paired_differences,
)
from .noise import NoiseShare, evaluation_noise  # noqa: F401
from .verdict import (  # noqa: F401
    CLAIM_CONVERGENCE,
    CLAIM_DISCRETE,
    CLAIM_GUIDANCE,
    CLAIM_IS,
    CLAIM_SDE,
    CLAIM_SIZE,
    CONVERGENCE_SPREAD,
    DEFINITIONS,
    Effect,
    INCONCLUSIVE,
    MIN_SETTLED,
    NO_DIFFERENCE,
    UNDERPOWERED,
    UNTESTED,
    VERDICTS,
    Verdict,
    _find_axis,
    _primary,
)
from .equivalence import claim_similar_convergence  # noqa: F401
from .reliability import claim_is_stability  # noqa: F401
from .claims import (  # noqa: F401
    claim_better,
    claim_guidance,
    claim_model_size,
    verdicts,
)
