"""Small Llama-style code LMs that share SmolLM2's tokenizer, so they can draft for SmolLM2.

Plain HF ``LlamaForCausalLM`` built from a ``LlamaConfig`` (nothing downloaded): pre-norm decoder blocks with
RMSNorm, rotary position embeddings, grouped-query attention (``num_heads`` query heads share
``num_kv_heads`` key/value heads) and a SwiGLU MLP, ``down(silu(gate(x)) * up(x))``; input and output
embeddings are tied. The vocabulary and special-token ids are SmolLM2-135M's (49152 tokens; ``<|endoftext|>``
= 0 is UNK, ``<|im_start|>`` = 1 is BOS, ``<|im_end|>`` = 2 is EOS and PAD), so a code LM's token ids mean
the same as SmolLM2's and its distributions can be compared or mixed token by token.

Parameter count (d = hidden_size, L = num_layers, h_kv = num_kv_heads * head_dim, f = intermediate_size,
V = vocab_size)::

    params = V*d  +  L * (2*d*d + 2*d*h_kv + 3*d*f + 2*d)  +  d        (tied embeddings, no biases)

With V = 49152 the embedding dominates: "tiny" has 6.69 M parameters (6.29 M in the embedding), "small" 15.73 M
(12.58 M). Training is in :mod:`ann.train.code`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CodeLMConfig", "CODE_LM_PRESETS", "SMOLLM2_VOCAB_SIZE", "build_code_lm", "count_parameters"]

SMOLLM2_VOCAB_SIZE = 49152
"""Vocabulary of SmolLM2's tokenizer (``len(tokenizer)``)."""


@dataclass(frozen=True, kw_only=True)
class CodeLMConfig:
    """Shape of a code LM (a ``LlamaConfig`` subset; defaults are SmolLM2's vocabulary and special tokens).

    Attributes:
        hidden_size: model width d; a multiple of ``num_heads``.
        num_layers: decoder blocks L.
        num_heads: query heads; ``head_dim = hidden_size // num_heads``.
        num_kv_heads: key/value heads (grouped-query attention); divides ``num_heads``.
        intermediate_size: SwiGLU hidden width f.
        max_position_embeddings: longest sequence (tokens) the model is meant for.
        rope_theta: rotary embedding base.
        vocab_size: V; SmolLM2's 49152 so that token ids are shared with it.
        unk_token_id, bos_token_id, eos_token_id, pad_token_id: SmolLM2's ids (0, 1, 2, 2).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    vocab_size: int = SMOLLM2_VOCAB_SIZE
    unk_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 2

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "max_position_embeddings", "vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CodeLMConfig.{name}={v!r} is invalid: use a positive int")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"CodeLMConfig.hidden_size={self.hidden_size} is not a multiple of num_heads="
                             f"{self.num_heads}: pick num_heads that divides hidden_size")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"CodeLMConfig.num_kv_heads={self.num_kv_heads} does not divide num_heads="
                             f"{self.num_heads}: pick a divisor of num_heads (1 = multi-query attention)")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"CodeLMConfig.num_heads={self.num_heads} gives an odd head_dim "
                             f"{self.hidden_size // self.num_heads}; rotary embeddings need an even head_dim")
        if not self.rope_theta > 0:
            raise ValueError(f"CodeLMConfig.rope_theta={self.rope_theta!r} is invalid: use a float > 0")
        for name in ("unk_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.vocab_size:
                raise ValueError(f"CodeLMConfig.{name}={v!r} is invalid: use an id in [0, vocab_size={self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_llama_config(self):
        """The equivalent ``transformers.LlamaConfig`` (tied embeddings, no biases, SiLU)."""
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim, hidden_act="silu",
            max_position_embeddings=self.max_position_embeddings, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rope_theta)},
            tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
            unk_token_id=self.unk_token_id, bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )

    def expected_parameters(self) -> int:
        """The closed-form count of the module docstring."""
        d, f, h_kv = self.hidden_size, self.intermediate_size, self.num_kv_heads * self.head_dim
        return self.vocab_size * d + self.num_layers * (2 * d * d + 2 * d * h_kv + 3 * d * f + 2 * d) + d


CODE_LM_PRESETS: dict[str, CodeLMConfig] = {
    "tiny": CodeLMConfig(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=384),
    "small": CodeLMConfig(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768),
}
"""Named shapes; derive variants with ``dataclasses.replace(CODE_LM_PRESETS["small"], num_layers=6)``."""


def build_code_lm(config: CodeLMConfig, *, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` of shape ``config`` (weights drawn under ``torch.manual_seed(seed)``;
    the global RNG state is restored afterwards)."""
    from transformers import LlamaForCausalLM

    if not isinstance(config, CodeLMConfig):
        raise TypeError(f"config must be a CodeLMConfig (see CODE_LM_PRESETS); got {type(config).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config.to_llama_config())
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied tensors counted once)."""
    return sum(p.numel() for p in model.parameters())
