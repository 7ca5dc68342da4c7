r"""A spiking multimodal model (spiking vision tower + spiking decoder LM) that answers SynthMed-VQA by generation.

Dimension letters: T timesteps, M images, N samples (image, question), V visual tokens, L text tokens, Dv / Dt the
vision / text widths, W the word vocabulary (:data:`tasks.synthmed.VQA_VOCAB`, shared with the ANN MFM so that
token ids and logits line up for distillation).

    images (M, C, S, S) -> direct encoding over T -> spike-driven ViT encoder (:class:`snn.models.Spikformer` with
        ``num_classes=0``, patches read from pixels) -> token membranes (T, M, V, Dv)
    projector: LIF -> Linear(Dv, Dt) -> BN -> visual tokens (T, M, V, Dt); gathered per sample -> (T, N, V, Dt)
    text: words [<bos> q_1 .. q_m a_1 .. a_r <eos> <pad> ..] (right-padded) -> embedding -> (T, N, L, Dt)
    u = [visual tokens ; text] + learned positions     (T, N, V + L, Dt)
    causal spike-driven blocks (:mod:`snn.models.blocks`: ((q k^T) * M) v on spikes, no softmax)
    head on the text positions: LIF(u) W_out, averaged over T -> logits (N, L, W)

Padding is on the right, after ``<eos>``: with causal attention the pads never reach a real position, so no
padding mask is needed. Answers are generated greedily word by word (:meth:`SpikingMFM.generate`), exactly like
the ANN MFM's, and scored by exact match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from snn.models.blocks import SeqBN, SpikeDrivenBlock, SpikeKVCache
from snn.models.spikformer import Spikformer, SpikformerConfig
from snn.neurons import Engine, NeuronSpec, build_neuron
from tasks.synthmed import VQA_VOCAB

__all__ = ["SpikingMFMConfig", "SpikingMFM"]


@dataclass(frozen=True, kw_only=True)
class SpikingMFMConfig:
    """Sizes of the spiking MFM; validated at construction (errors name the field).

    The defaults match the ANN ``mfm-small`` preset's widths (48), depths (1) and patch grid (64 / 16 = 4 x 4 = 16
    visual tokens), so the two models have about the same parameter count.
    """

    image_size: int = 64
    channels: int = 1
    patch_size: int = 16
    vision_dim: int = 48
    vision_depth: int = 1
    vision_heads: int = 2
    text_dim: int = 48
    text_depth: int = 1
    text_heads: int = 2
    mlp_ratio: int = 2
    vocab_size: int = len(VQA_VOCAB)
    max_text: int = 24
    timesteps: int = 4
    neuron: NeuronSpec = NeuronSpec(kind="lif", tau=2.0, v_reset=0.0, detach_reset=True)
    attn_threshold: float = 0.5
    engine: Engine = Engine.FUSED

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"SpikingMFMConfig.{field}={getattr(self, field)!r} is invalid: {fix}")

        for f in ("image_size", "channels", "patch_size", "vision_dim", "vision_depth", "vision_heads", "text_dim",
                  "text_depth", "text_heads", "mlp_ratio", "vocab_size", "max_text", "timesteps"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f, "use an int >= 1")
        need(self.image_size % self.patch_size == 0, "patch_size", f"must divide image_size={self.image_size}")
        need(self.text_dim % self.text_heads == 0, "text_heads", f"must divide text_dim={self.text_dim}")
        need(self.attn_threshold > 0, "attn_threshold", "use a number > 0")
        object.__setattr__(self, "engine", Engine(self.engine))

    def vision_config(self) -> SpikformerConfig:
        return SpikformerConfig(image_size=self.image_size, channels=self.channels, patch_size=self.patch_size,
                                dim=self.vision_dim, depth=self.vision_depth, heads=self.vision_heads,
                                mlp_ratio=self.mlp_ratio, num_classes=0, timesteps=self.timesteps, neuron=self.neuron,
                                attn_threshold=self.attn_threshold, engine=self.engine, conv_stem=False)

    @property
    def visual_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class SpikingMFM(nn.Module):
    """The model of the module docstring. ``forward(images, image_index, tokens) -> logits (N, L, W)``."""

    def __init__(self, config: SpikingMFMConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or SpikingMFMConfig()
        self.vision = Spikformer(cfg.vision_config())
        self.proj_lif = build_neuron(cfg.neuron, engine=cfg.engine)
        self.proj, self.proj_bn = nn.Linear(cfg.vision_dim, cfg.text_dim, bias=False), SeqBN(cfg.text_dim)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.text_dim)
        self.pos = nn.Parameter(torch.zeros(cfg.visual_tokens + cfg.max_text, cfg.text_dim))
        self.blocks = nn.ModuleList(
            SpikeDrivenBlock(dim=cfg.text_dim, heads=cfg.text_heads, mlp_ratio=cfg.mlp_ratio, neuron=cfg.neuron,
                             attn_threshold=cfg.attn_threshold, engine=cfg.engine, causal=True)
            for _ in range(cfg.text_depth))
        self.head_lif = build_neuron(cfg.neuron, engine=cfg.engine)
        self.head = nn.Linear(cfg.text_dim, cfg.vocab_size)

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Images (M, C, S, S) in [0, 1] -> projected visual-token currents (T, M, V, Dt)."""
        cfg = self.config
        shape = (cfg.channels, cfg.image_size, cfg.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != shape:
            raise ValueError(f"SpikingMFM: expected images (M, {', '.join(map(str, shape))}), got {tuple(images.shape)}")
        from spikingjelly.activation_based import functional

        functional.reset_net(self)  # every call starts at rest
        x_seq = images.unsqueeze(0).expand(cfg.timesteps, *images.shape)  # direct encoding
        return self.proj_bn(self.proj(self.proj_lif(self.vision.encode(x_seq))))

    def decode(self, visual: torch.Tensor | None, tokens: torch.Tensor, cache: SpikeKVCache | None = None,
               logits_to_keep: int = 0) -> torch.Tensor:
        """Visual tokens of each sample (T, N, V, Dt) and words (N, L) -> next-word logits (N, L, W)
        (``logits_to_keep`` > 0: the last that many only). With ``cache`` (eval mode only), a cached decode
        (:class:`snn.models.blocks.SpikeKVCache`): the first call (empty cache) takes ``visual`` and the prompt's
        words, later calls only the next words (``visual`` None), which reuse the cached key / value spikes; the
        logits equal the full call's."""
        cfg = self.config
        past = 0 if cache is None else cache.length
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"SpikingMFM: expected integer words (N, L), got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size):
            raise ValueError(f"SpikingMFM: word ids must lie in [0, {cfg.vocab_size})")
        if cache is not None and self.training:
            raise ValueError("SpikingMFM: decoding with a cache needs eval mode (BatchNorm's batch statistics would mix "
                             "positions); call model.eval() first")
        if past and visual is not None:
            raise ValueError("SpikingMFM: the cache already holds the visual tokens; pass visual=None after the first call")
        if not past and (visual is None or visual.dim() != 4 or visual.shape[0] != cfg.timesteps
                         or visual.shape[1] != tokens.shape[0]):
            raise ValueError(f"SpikingMFM: visual tokens {None if visual is None else tuple(visual.shape)} do not match "
                             f"(T={cfg.timesteps}, N={tokens.shape[0]}, V, Dt)")
        V = visual.shape[2] if visual is not None else 0
        words = past + tokens.shape[1] - (cfg.visual_tokens if past else 0)
        if words > cfg.max_text:
            raise ValueError(f"SpikingMFM: {words} words exceed max_text={cfg.max_text}")
        from spikingjelly.activation_based import functional

        for m in (self.blocks, self.head_lif):
            functional.reset_net(m)
        if cache is not None and not cache.blocks:
            cache.blocks = [{} for _ in self.blocks]
        text = self.embed(tokens).unsqueeze(0).expand(cfg.timesteps, -1, -1, -1)  # (T, N, L, Dt)
        u = (torch.cat([visual, text], dim=2) if V else text) + self.pos[past: past + V + tokens.shape[1]]
        for i, block in enumerate(self.blocks):  # (T, N, V + L, Dt), or (T, N, L, Dt) after the first cached call
            u = block(u, None if cache is None else cache.blocks[i])
        if cache is not None:
            cache.length = past + V + tokens.shape[1]
        u = u[:, :, V:]
        if logits_to_keep:
            u = u[:, :, -logits_to_keep:]
        return self.head(self.head_lif(u)).mean(dim=0)  # (T, N, L, Dt) -> (N, L, W)

    def forward(self, images: torch.Tensor, image_index: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Images (M, C, S, S), the image of each sample (N,) and words (N, L) -> next-word logits (N, L, W)."""
        if image_index.dim() != 1 or image_index.shape[0] != tokens.shape[0]:
            raise ValueError(f"SpikingMFM: image_index must be (N,) with N={tokens.shape[0]} samples, "
                             f"got {tuple(image_index.shape)}")
        return self.decode(self.visual_tokens(images)[:, image_index], tokens)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, image_index: torch.Tensor, prompt: torch.Tensor,
                 prompt_len: torch.Tensor, *, max_new_tokens: int, eos_id: int, pad_id: int) -> torch.Tensor:
        """Greedy answers: (N, max_new_tokens) words after each right-padded prompt (``prompt_len`` real words),
        ``pad_id`` after ``<eos>``. Causality makes re-running the whole prefix exact (no cache needed)."""
        visual = self.visual_tokens(images)[:, image_index]
        N, Lp = prompt.shape
        seq = torch.cat([prompt, prompt.new_full((N, max_new_tokens), pad_id)], dim=1)
        rows, done = torch.arange(N), torch.zeros(N, dtype=torch.bool)
        out = prompt.new_full((N, max_new_tokens), pad_id)
        for j in range(max_new_tokens):
            at = prompt_len - 1 + j  # position whose logits predict the j-th answer word
            nxt = self.decode(visual, seq[:, : Lp + j])[rows, at].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            out[:, j] = nxt
            seq[rows, at + 1] = nxt
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return out
