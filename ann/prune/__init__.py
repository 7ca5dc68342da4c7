"""Structural pruning (issue [P]), split by question:

- what is coupled, and how to cut it (:mod:`ann.prune.surgery`: the towers of Llama, ViT, BERT and LLaVA models;
  smaller ``nn.Linear`` layers, fewer attention heads and blocks, the config updated so that the result is an
  ordinary HF model);
- what to remove (:mod:`ann.prune.importance`: magnitude, Wanda, Taylor, block influence);
- how much, where (:mod:`ann.prune.plan`: a greedy search over towers and structure kinds by measured sensitivity);
- the vocabulary (:mod:`ann.prune.vocab`: a decoder LM's embedding rows cut to a domain's tokens, the BPE
  tokenizer trimmed to match);
- recovery (:mod:`ann.prune.recover`: distillation from the unpruned model, optionally with the next-token loss on
  the domain's text; all weights or LoRA).
"""
