"""Studies: a grid of runs (base config x axes x seeds), a crash-safe ledger, a multi-process
runner, plateau detection, statistics across seeds and verdicts on the paper's claims."""

from .convergence import Convergence, bootstrap_mean_ci, convergence_across_seeds, convergence_point, plateau_value
from .ledger import Ledger
from .runner import Runner, Task, train_and_evaluate
from .spec import Evaluation, RunSpec, Study, load_study, run_id, study_from_dict

__all__ = ["Convergence", "Evaluation", "Ledger", "RunSpec", "Runner", "Study", "Task", "bootstrap_mean_ci",
           "convergence_across_seeds", "convergence_point", "load_study", "plateau_value", "run_id", "study_from_dict",
           "train_and_evaluate"]
