"""Co-optimization of the MFM's inputs (issue [X]): visual resolution, patch size / stride, token merging,
visual-token pruning (ViT and decoder) and text length, searched together against accuracy and cost.

- :mod:`ann.cooptimize.geometry`: move a trained MFM to another resolution / patch size / merging;
- :mod:`ann.cooptimize.adapt`: the short fine-tune that follows;
- :mod:`ann.cooptimize.runner`: :class:`TokenPrunedMFM`, ViT token pruning and FastV in the decoder;
- :mod:`ann.cooptimize.text`: shorter questions (keep the most informative tokens);
- :mod:`ann.cooptimize.search`: the search space, Pareto front and the choice under a budget.

The measuring loop (accuracy, CPU and accelerator cost) is ``python -m benchmarks.cooptimize``.
"""

from ann.cooptimize.adapt import finetune
from ann.cooptimize.geometry import Geometry, adapt_geometry, geometry_of, resize_images
from ann.cooptimize.runner import TokenPrunedMFM
from ann.cooptimize.search import Budget, BudgetInfeasible, InputConfig, SearchSpace, choose, pareto_front
from ann.cooptimize.text import compress_questions, token_idf

__all__ = ["Geometry", "adapt_geometry", "geometry_of", "resize_images", "finetune", "TokenPrunedMFM", "compress_questions",
           "token_idf", "InputConfig", "SearchSpace", "Budget", "BudgetInfeasible", "pareto_front", "choose"]
