"""Structural pruning (issue [P]): what is coupled (:mod:`ann.prune.surgery` knows the coupled weights of each
architecture), what to remove (:mod:`ann.prune.importance`), how to cut (physical surgery: smaller ``nn.Linear``
layers, fewer heads and blocks, the config updated so that the result is an ordinary HF model).

Work in progress: Llama-family decoders (SmolLM2 included) so far."""
