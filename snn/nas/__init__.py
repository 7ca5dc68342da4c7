"""Memory-aware spiking neural architecture search.

- :mod:`snn.nas.cells`: the ops a cell can pick (spike-driven attention, spiking MLP, spiking depthwise /
  pointwise token-mixing convolution, skip);
- :mod:`snn.nas.space`: the typed :class:`Genotype`, the :class:`SearchSpace` of choices and :func:`build`
  (the hand-designed :class:`snn.models.Spikformer` is the point :func:`spikformer_genotype`);
- :mod:`snn.nas.evaluate`: memory before training, SNASNet's training-free score, short training, Spearman's rho;
- :mod:`snn.nas.search`: the optuna multi-objective study (accuracy, memory, energy) under a hard memory budget,
  resumable and shared by workers through an RDB storage; ``python -m snn.nas`` is its command line.
"""

from snn.nas.cells import CellOp
from snn.nas.evaluate import (CandidateResult, FastEvalConfig, TaskData, digits_task, evaluate_candidate, memory_of,
                              spearman, spike_kernel_score, task_from_source, train_fully)
from snn.nas.search import (InfeasibleBudgetError, SamplerKind, SearchConfig, SearchResult, StudySettings, TrialRecord,
                            default_storage, load_result, open_storage, open_study, run_search, stored_settings)
from snn.nas.space import Cell, Genotype, SearchSpace, SpikingCellNet, build, spikformer_genotype

__all__ = ["CellOp", "Cell", "Genotype", "SearchSpace", "SpikingCellNet", "build", "spikformer_genotype",
           "TaskData", "digits_task", "task_from_source", "memory_of", "spike_kernel_score", "FastEvalConfig",
           "CandidateResult", "evaluate_candidate", "train_fully", "spearman", "InfeasibleBudgetError", "SamplerKind",
           "SearchConfig", "StudySettings", "TrialRecord", "SearchResult", "default_storage", "open_storage", "open_study",
           "run_search", "load_result", "stored_settings"]
