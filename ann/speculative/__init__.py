"""Speculative decoding (issue [R]) for HF causal LMs and the MFM's decoder.

- :mod:`ann.speculative.cache`: a model and the KV cache of exactly the tokens it has seen (crop on rejection);
- :mod:`ann.speculative.drafts`: who guesses (a small LM with the same tokenizer, the target with blocks
  skipped, prompt lookup, the first of several that guesses anything);
- :mod:`ann.speculative.decode`: greedy and rejection-sampling verification, the expected-speed-up formula and
  the adaptive draft length.
"""

from ann.speculative.cache import CachedLM
from ann.speculative.decode import DecodeStats, DraftLength, expected_speedup, speculative_generate
from ann.speculative.drafts import (FallbackDraft, ModelDraft, PromptLookupDraft, Proposal, Sampler,
                                    check_same_tokenizer, layer_skip_draft)

__all__ = ["CachedLM", "DecodeStats", "DraftLength", "expected_speedup", "speculative_generate", "FallbackDraft",
           "ModelDraft", "PromptLookupDraft", "Proposal", "Sampler", "check_same_tokenizer", "layer_skip_draft"]
