r"""The yardstick of a decoding language model (the code rows, the SynthMed MFMs): one inference is a greedy
decode, costed as the decode runs.

- HF causal LMs decode with the key/value cache (:func:`hf_greedy`); their workload is
  :func:`neurohw.workload.reference.trace_decode`'s (prefill of the prompt, then single-token steps reading and
  writing the cache), :func:`trace_hf_decode`'s for inputs of any kind (an MFM's image and question, then its
  answer tokens), or, for a decode whose calls differ from plain greedy ones (speculative decoding), the recorded
  calls replayed (:func:`recording`, :func:`trace_calls`). State: the key/value cache (:func:`kv_cache_bytes`) at
  :data:`KV_BITS`.
- The spiking models (:class:`snn.models.SpikingLM`, :class:`snn.models.SpikingMFM`) decode with their spike cache
  (:class:`snn.models.SpikeKVCache`: the key / value spikes of every block and timestep, 1 bit each); their
  workload (:func:`trace_spiking_decode`) is the same decode traced on the real text, so spike rates are measured
  ones. State: the spike cache (1 bit per spike) + the membranes of the prefill (the largest call) at their width.

Either way every step is one forward call on the accelerator, whose weights are fetched again per call when they
do not stay on chip (:mod:`neurohw.accel`, ``Op.passes`` for synaptic ops): the cost of a decode, not of one
forward over the whole text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace

import torch

__all__ = ["KV_BITS", "kv_cache_bytes", "hf_greedy", "recording", "trace_calls", "with_weight_bits",
           "trace_hf_decode", "trace_spiking_decode"]

KV_BITS = 32  # the key/value cache as stored: every LM row computes its activations in fp32 (the
# memory column counts state at its stored width, like the SynthMed MFMs' caches; the accelerator moves it at INT16)


def kv_cache_bytes(model, positions: int, bits: int = KV_BITS) -> float:
    """Bytes of a decoder's key/value cache holding ``positions`` positions: ``positions * sum over layers of the
    k_proj and v_proj output widths (kv_heads * head_dim each) * bits / 8`` (read off the modules, so a pruned model
    with fewer key/value heads in some layers counts right)."""
    width = sum(m.out_features for n, m in model.named_modules() if n.endswith(("k_proj", "v_proj"))
                and hasattr(m, "out_features"))
    if not width:
        raise ValueError(f"{type(model).__name__} has no k_proj / v_proj layers: not a Llama-style decoder")
    return positions * width * bits / 8


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``prompt`` with the KV cache (plain decoding of :mod:`ann.speculative`)."""
    from ann.speculative import CachedLM, speculative_generate

    return speculative_generate(CachedLM(model), None, prompt, max_new_tokens=n)[0]


@contextlib.contextmanager
def recording(model, calls: list):
    """While active, every forward of ``model`` appends ``(cached positions, fed tokens, logits kept)``."""
    def hook(_m, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        calls.append((cache.get_seq_length() if cache is not None else 0, int(ids.shape[1]),
                      kwargs.get("logits_to_keep", 0)))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@torch.no_grad()
def trace_calls(model, calls: list[tuple[int, int, int]], *, name: str, bits: int = 16, seed: int = 0):
    """The workload of a causal LM's forward calls ``(cached positions, fed tokens, logits kept)`` in order (e.g.
    recorded by a speculative decode), replayed with a key/value cache cropped to each call's cached positions (so
    shapes, and costs, are the recorded ones; token values do not change an ANN's cost); INT ``bits`` weights and
    activations. A plain decode's calls ``[(0, P, 1), (P, 1, 1), ..., (P + N - 2, 1, 1)]`` give
    :func:`neurohw.workload.reference.trace_decode`'s workload."""
    from transformers import DynamicCache

    from neurohw.workload import Numeric
    from neurohw.workload.trace import KVCacheSpec, Tracer

    cfg = model.config
    tracer = Tracer(model, batch=1, kv=KVCacheSpec.of(model.config))
    g = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    try:
        for past, fed, keep in calls:
            if past == 0:
                cache = DynamicCache()
            elif cache.get_seq_length() > past:
                cache.crop(past - cache.get_seq_length())  # a negative count: remove that many positions
            if cache.get_seq_length() != past:
                raise ValueError(f"trace_calls: a call on {past} cached positions follows a cache of "
                                 f"{cache.get_seq_length()}; the calls must come from one sequence, in order")
            ids = torch.randint(3, cfg.vocab_size, (1, fed), generator=g)
            tracer.rec.new_tokens = fed
            out = tracer.run(lambda: model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=keep))
            cache = out.past_key_values
    finally:
        tracer.close()
    return tracer.workload(name=name, numeric=Numeric.INT, weight_bits=bits, act_bits=bits, state_bits=bits)


def with_weight_bits(workload, bits: dict[str, int]):
    """``workload`` with the weight width of every op named in ``bits`` (module name -> bits) replaced."""
    return replace(workload, ops=tuple(replace(op, weight_bits=bits[op.name]) if op.name in bits else op
                                       for op in workload.ops))


@torch.no_grad()
def trace_hf_decode(model, prefill: dict, steps: torch.Tensor, *, name: str, weight_bits: int = 16, act_bits: int = 16,
                    prefill_runner=None, cache_prefill: dict | None = None):
    """The workload of a HF causal (or image-text-to-text) model's cached greedy decode, per sample of a batch of
    equal shapes: the prefill ``model(**prefill)`` (logits of the last position only), then ``steps`` (B, S)
    fed one token per call with the key/value cache (teacher-forced: the tokens greedy decoding produced, so
    shapes are the decode's). ``prefill_runner``: a module around ``model`` traced for the prefill instead
    (e.g. :class:`ann.cooptimize.TokenPrunedMFM`'s token pruning, which keeps no cache); the steps then read the
    cache of ``model``'s own prefill (on ``cache_prefill``, default ``prefill``: e.g. the runner's input
    embeddings), which keeps every token (an upper bound of the runner's steps)."""
    from neurohw.workload import Numeric
    from neurohw.workload.trace import KVCacheSpec, Tracer

    model.eval()
    cache = None
    if prefill_runner is not None:  # the steps' cache, made before the tracer's hooks exist
        cache = model(**(cache_prefill or prefill), use_cache=True, logits_to_keep=1).past_key_values
    B, P = prefill["input_ids"].shape
    tracer = Tracer(prefill_runner or model, batch=B, kv=KVCacheSpec.of(model.config))
    try:
        tracer.rec.new_tokens = P
        if prefill_runner is not None:
            tracer.run(lambda: prefill_runner(**prefill))
        else:
            cache = tracer.run(lambda: model(**prefill, use_cache=True, logits_to_keep=1)).past_key_values
        for j in range(steps.shape[1]):
            tracer.rec.new_tokens = 1
            ids = steps[:, j:j + 1]
            cache = tracer.run(lambda: model(input_ids=ids, past_key_values=cache, use_cache=True,
                                             logits_to_keep=1)).past_key_values
    finally:
        tracer.close()
    return tracer.workload(name=name, numeric=Numeric.INT, weight_bits=weight_bits, act_bits=act_bits,
                           state_bits=act_bits)


@torch.no_grad()
def trace_spiking_decode(model, tokens: torch.Tensor, prompt_len: int, *, name: str, weight_bits: int, act_bits: int,
                         state_bits: int, visual: Callable[[], torch.Tensor] | None = None):
    """The workload of a spiking decoder's cached greedy decode (:class:`snn.models.blocks.SpikeKVCache`) of
    ``tokens`` (B, L: prompt + the decoded tokens but the last, which is not fed), per sample: a prefill of the
    first ``prompt_len`` positions (logits of the last only), then one single-position step per further token,
    every call on the real text (measured spike rates) under one tracer with the model's T. ``visual``: for
    :class:`snn.models.SpikingMFM`, makes the visual tokens (traced too) that the prefill takes. Returns
    ``(workload, the cache at the end)``."""
    from neurohw.workload import Numeric
    from neurohw.workload.trace import Tracer
    from snn.models import SpikeKVCache

    if not 1 <= prompt_len <= tokens.shape[1]:
        raise ValueError(f"trace_spiking_decode: prompt_len={prompt_len} must lie in [1, {tokens.shape[1]}]")
    cache = SpikeKVCache()
    if visual is None:
        def call(ids, first):
            return model(ids, cache, logits_to_keep=1)
    else:
        def call(ids, first):
            return model.decode(visual() if first else None, ids, cache, logits_to_keep=1)
    tracer = Tracer(model, batch=tokens.shape[0], timesteps=model.config.timesteps)
    was_training = model.training
    model.eval()
    try:
        tracer.run(lambda: call(tokens[:, :prompt_len], True))
        for n in range(prompt_len, tokens.shape[1]):
            tracer.run(lambda: call(tokens[:, n:n + 1], False))
    finally:
        tracer.close()
        model.train(was_training)
    return tracer.workload(name=name, numeric=Numeric.INT, weight_bits=weight_bits, act_bits=act_bits,
                           state_bits=state_bits), cache
