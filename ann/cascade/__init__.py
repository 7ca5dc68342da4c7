"""Small-to-large cascades with lightweight self-tests (issue [R]).

- :mod:`ann.cascade.policy`: tiers' records, routing by thresholds, exact cost / quality of any cascade, Pareto
  search of thresholds on a validation split;
- :mod:`ann.cascade.vqa`: MFM tiers on SynthMed-VQA (confidence and consistency self-tests);
- :mod:`ann.cascade.code`: code tiers (k candidates, l self-generated tests, run in :mod:`tasks.sandbox`).
"""

from ann.cascade.policy import TierRun, choose, evaluate, pareto_search, route

__all__ = ["TierRun", "choose", "evaluate", "pareto_search", "route"]
