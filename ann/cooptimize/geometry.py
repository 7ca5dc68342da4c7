r"""Move a trained MFM to another input geometry: resolution S', patch size P', token merging k'.

The visual tokens the decoder sees are ``V = (S / P / k)^2``; their cost dominates the vision tower, so the
geometry is the first knob of the co-optimization (:mod:`ann.cooptimize.search`). :func:`adapt_geometry` makes a
new :class:`~ann.models.mfm.MFMForConditionalGeneration` for ``(S', P', k')`` whose weights are the trained
model's, transferred so that the new model starts close to the old one (a short fine-tune then adapts it,
:func:`ann.cooptimize.adapt.finetune`):

- **Resolution** (``S'``): the scans are resized to ``S' x S'`` by area averaging (:func:`resize_images`,
  ``F.interpolate(mode="area")``) before the ViT; the patch grid becomes ``n' = S' / P'``.
- **Patch size** (``P' = r P``, r a positive integer; FlexiViT's pseudo-inverse resize, Beyer et al. 2023): with
  ``A`` the area downsampling of a ``P' x P'`` patch to ``P x P`` (``x = A x'``), ``<A x', w> = <x', A^T w>``, so

      w' = A^T w = repeat(w, r x r) / r^2

  makes a ``P'`` patch's embedding equal the old kernel applied to its area-downsampled version (exact).
- **Position embeddings**: the ``n x n`` patch position table is resized bicubically to ``n' x n'`` (what HF's
  ``ViTEmbeddings.interpolate_pos_encoding`` does at run time); the CLS entry is kept.
- **Token merging** (``k' = r k`` or ``k = r k'``): the projector's first layer reads the concatenation of a
  ``k x k`` block of patch features, columns ordered ``(a, b, d)`` (row ``a``, column ``b`` in the block, feature
  ``d``; :class:`~ann.models.mfm.MergeProjector`). Coarser (``k' = r k``): each new token covers ``r x r`` old
  tokens and starts as the mean of their first-layer pre-activations,
  ``W'[:, (a', b', d)] = W[:, (a' mod k, b' mod k, d)] / r^2``. Finer (``k' = k / r``): a new token covers ``1 / r^2``
  of an old one and starts as the old layer applied to ``r x r`` copies of it,
  ``W'[:, (a', b', d)] = sum_{i, j < r} W[:, (a' r + i, b' r + j, d)]``.

Everything else (ViT layers, projector's second layer, decoder) is copied unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ann.models.mfm import MFMForConditionalGeneration, num_visual_tokens

__all__ = ["Geometry", "adapt_geometry", "geometry_of", "resize_images"]


@dataclass(frozen=True)
class Geometry:
    """Input geometry of an MFM (sizes in pixels).

    Attributes:
        image_size: side S of the square image the ViT sees; divisible by ``patch_size``.
        patch_size: side P of a ViT patch (= the patch-embedding stride).
        merge_factor: k, the k x k token merging before the projector; divides ``image_size / patch_size``.
    """

    image_size: int
    patch_size: int
    merge_factor: int

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "merge_factor"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"Geometry.{name}={v!r} is invalid: use a positive int")
        if self.image_size % self.patch_size:
            raise ValueError(f"Geometry.image_size={self.image_size} is not divisible by patch_size={self.patch_size}: "
                             "use a multiple of the patch size")
        if (self.image_size // self.patch_size) % self.merge_factor:
            raise ValueError(f"Geometry.merge_factor={self.merge_factor} does not divide the "
                             f"{self.image_size // self.patch_size}-patch grid side: use a divisor of image_size / patch_size")

    @property
    def visual_tokens(self) -> int:
        return num_visual_tokens(self.image_size, self.patch_size, self.merge_factor)

    @property
    def label(self) -> str:
        return f"S{self.image_size}/P{self.patch_size}/k{self.merge_factor}"


def geometry_of(mfm: MFMForConditionalGeneration) -> Geometry:
    v = mfm.config.vision_config
    return Geometry(v.image_size, v.patch_size, mfm.config.merge_factor)


def resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Area-average resize of square images (B, C, S, S) -> (B, C, image_size, image_size); identity when equal."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"resize_images expects square images (B, C, S, S), got {tuple(images.shape)}")
    if images.shape[-1] == image_size:
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="area")


def _ratio(new: int, old: int, what: str) -> tuple[int, bool]:
    """(r, coarser): ``new = r * old`` (coarser) or ``old = r * new``; refuses non-integer ratios."""
    if new % old == 0:
        return new // old, True
    if old % new == 0:
        return old // new, False
    raise ValueError(f"{what}: {new} and the model's {old} must be integer multiples of one another")


@torch.no_grad()
def _patch_kernel(w: torch.Tensor, new_p: int) -> torch.Tensor:
    """(Dv, C, P, P) -> (Dv, C, P', P'), P' = r P: ``repeat(w, r x r) / r^2`` (module docstring)."""
    r, coarser = _ratio(new_p, w.shape[-1], "patch_size")
    if not coarser:
        raise ValueError(f"patch_size={new_p} is smaller than the trained {w.shape[-1]}: only multiples of the "
                         "trained patch size can be transferred exactly; use a multiple of it")
    return w.repeat_interleave(r, -2).repeat_interleave(r, -1) / r ** 2


@torch.no_grad()
def _positions(pos: torch.Tensor, n_new: int) -> torch.Tensor:
    """(1, 1 + n^2, D) -> (1, 1 + n'^2, D): CLS kept, patch table resized bicubically."""
    n = int(round((pos.shape[1] - 1) ** 0.5))
    if n == n_new:
        return pos.clone()
    grid = pos[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)  # (1, D, n, n)
    grid = F.interpolate(grid, size=(n_new, n_new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, n_new * n_new, -1)], 1)


@torch.no_grad()
def _merge_weight(w: torch.Tensor, k: int, new_k: int, dv: int) -> torch.Tensor:
    """First projector layer (Dt, k^2 Dv) -> (Dt, k'^2 Dv) by the merging rule of the module docstring."""
    blocks = w.reshape(w.shape[0], k, k, dv)  # (Dt, a, b, d)
    r, coarser = _ratio(new_k, k, "merge_factor")
    if coarser:  # a' -> a' mod k: tile the k x k block r times in each direction
        new = blocks.repeat(1, r, r, 1) / r ** 2  # (Dt, k', k', d)
    else:  # sum the r x r sub-blocks that one new token stands for
        new = blocks.reshape(w.shape[0], new_k, r, new_k, r, dv).sum((2, 4))  # (Dt, k', k', d)
    return new.reshape(w.shape[0], new_k * new_k * dv)


def adapt_geometry(mfm: MFMForConditionalGeneration, geometry: Geometry) -> MFMForConditionalGeneration:
    """A new MFM for ``geometry`` with ``mfm``'s weights transferred (module docstring); ``mfm`` is not changed."""
    old = geometry_of(mfm)
    if geometry == old:
        return copy.deepcopy(mfm)
    if geometry.visual_tokens < 1:
        raise ValueError(f"geometry {geometry.label} leaves no visual token")
    config = copy.deepcopy(mfm.config)
    config.vision_config.image_size, config.vision_config.patch_size = geometry.image_size, geometry.patch_size
    config.merge_factor = geometry.merge_factor
    config.image_seq_length = geometry.visual_tokens
    state = {k: v.clone() for k, v in mfm.state_dict().items()}
    pre = "model.vision_tower.embeddings."
    state[pre + "patch_embeddings.projection.weight"] = _patch_kernel(state[pre + "patch_embeddings.projection.weight"],
                                                                      geometry.patch_size)
    state[pre + "position_embeddings"] = _positions(state[pre + "position_embeddings"],
                                                    geometry.image_size // geometry.patch_size)
    key = "model.multi_modal_projector.linear_1.weight"
    state[key] = _merge_weight(state[key], old.merge_factor, geometry.merge_factor, config.vision_config.hidden_size)
    new = MFMForConditionalGeneration(config)
    missing, unexpected = new.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"adapt_geometry: state dict mismatch (missing {missing}, unexpected {unexpected})")
    new.tie_weights()
    return new.eval()
