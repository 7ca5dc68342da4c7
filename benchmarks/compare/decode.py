r"""The yardstick of a decoding language model (the code rows): one inference is a greedy decode, costed as the
decode runs, on the CPU and on the accelerator.

- HF causal LMs decode with the key/value cache (:func:`hf_greedy`); their workload is
  :func:`neurohw.workload.reference.trace_decode`'s (prefill of the prompt, then single-token steps reading and
  writing the cache), or, for a decode whose calls differ from plain greedy ones (speculative decoding), the
  recorded calls replayed (:func:`recording`, :func:`trace_calls`). State: the key/value cache
  (:func:`kv_cache_bytes`) at :data:`KV_BITS`.
- The spiking LM (:class:`snn.models.SpikingLM`) decodes with its spike cache (:meth:`snn.models.SpikingLM.generate`:
  the key / value spikes of every block and timestep, 1 bit each); its workload (:func:`trace_spiking_decode`) is
  the same decode traced on the real text, so spike rates are measured ones. State: the spike cache (1 bit per
  spike) + the membranes of one step's neurons at their width.

Either way every step is one forward call on the accelerator, whose weights are fetched again per call when they
do not stay on chip (:mod:`neurohw.accel`): the cost of a decode, not of one forward over the whole text.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch

__all__ = ["KV_BITS", "kv_cache_bytes", "hf_greedy", "recording", "trace_calls", "with_weight_bits",
           "trace_spiking_decode"]

KV_BITS = 16  # the key/value cache on the accelerator (the fp32 rows' INT16 activations)


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
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    tracer = Tracer(model, batch=1, kv=KVCacheSpec(kv_heads=getattr(cfg, "num_key_value_heads", None)
                                                   or cfg.num_attention_heads, head_dim=head_dim))
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
def trace_spiking_decode(model, tokens: list[int], prompt_len: int, *, name: str, weight_bits: int, act_bits: int,
                         state_bits: int):
    """The workload of the spiking LM's cached greedy decode of ``tokens`` (prompt + the decoded tokens but the
    last, which is not fed): a prefill of the first ``prompt_len`` positions (logits of the last only), then one
    single-position step per further token, every call on the real text (measured spike rates) under one tracer
    with the model's T. Returns ``(workload, the spike cache at the end)``."""
    from neurohw.workload import Numeric
    from neurohw.workload.trace import Tracer
    from snn.models import SpikingLMCache

    if not 1 <= prompt_len <= len(tokens):
        raise ValueError(f"trace_spiking_decode: prompt_len={prompt_len} must lie in [1, {len(tokens)}]")
    ids = torch.tensor([tokens])
    cache = SpikingLMCache()
    tracer = Tracer(model, batch=1, timesteps=model.config.timesteps)
    was_training = model.training
    model.eval()
    try:
        tracer.run(lambda: model(ids[:, :prompt_len], cache, logits_to_keep=1))
        for n in range(prompt_len, len(tokens)):
            tracer.run(lambda: model(ids[:, n:n + 1], cache, logits_to_keep=1))
    finally:
        tracer.close()
        model.train(was_training)
    return tracer.workload(name=name, numeric=Numeric.INT, weight_bits=weight_bits, act_bits=act_bits,
                           state_bits=state_bits), cache
