r"""Evaluating candidates of the search space: memory (before training), a training-free score, short training,
and the rank correlation that says how well a fast evaluation predicts full training.

- Memory: :func:`snn.quant.memory.spiking_memory` of the built network (float32 weights, BatchNorm statistics and
  the membrane state of one sample: counted for real, before any training, so it can be a hard constraint).
- Training-free score (SNASNet, Kim et al., "Neural Architecture Search for Spiking Neural Networks", ECCV 2022):
  for a mini-batch of B inputs and every neuron layer l and timestep t, the binary spike pattern c_{l,t}(i) of
  input i (N_l neurons). The kernel

      K[i, j] = sum_{l, t} ( N_l - d_H(c_{l,t}(i), c_{l,t}(j)) )
              = sum_{l, t} ( c_{l,t}(i) . c_{l,t}(j) + (1 - c_{l,t}(i)) . (1 - c_{l,t}(j)) )

  (d_H: Hamming distance) is large off the diagonal when the untrained network cannot tell inputs apart, and the
  score is ``log |det K|``: higher means more distinct activation patterns, which SNASNet found to predict
  accuracy after training. It costs one forward pass of the untrained network.
- Short training: :func:`tasks.classifier.train_classifier` for a few epochs (best validation epoch).
- Rank correlation: Spearman's rho (:func:`scipy.stats.spearmanr`, average ranks for ties) between the fast
  evaluation of a sample of candidates and their accuracy after full training.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from snn.nas.space import Genotype, SearchSpace, build
from snn.quant.memory import MemoryReport, spiking_memory
from snn.quant.neuron import is_neuron

__all__ = ["TaskData", "digits_task", "TASKS", "task_from_source", "memory_of", "spike_kernel_score", "FastEvalConfig", "CandidateResult",
           "evaluate_candidate", "train_fully", "spearman", "EnergyFn"]

EnergyFn = Callable[[nn.Module, torch.Tensor], float]
"""``(trained model, a batch of inputs (B, C, H, W)) -> energy of one inference`` (the caller's unit, e.g. pJ from
the accelerator model of :mod:`neurohw.accel`, which ``snn`` does not import)."""


@dataclass(frozen=True)
class TaskData:
    """Images (N, C, H, W) and labels (N,) of the train and validation splits; ``source`` says where they came
    from (recorded with a study so that every worker of it uses the same data)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    source: str

    def __post_init__(self) -> None:
        for x, y, split in ((self.x_train, self.y_train, "train"), (self.x_val, self.y_val, "val")):
            if x.dim() != 4 or y.dim() != 1 or len(x) != len(y) or len(x) == 0:
                raise ValueError(f"TaskData.x_{split}/y_{split}: expected images (N, C, H, W) and labels (N,) with "
                                 f"N >= 1, got {tuple(x.shape)} and {tuple(y.shape)}")


def digits_task(*, seed: int = 0, train_samples: int | None = None, val_samples: int | None = None) -> TaskData:
    """The digits task (:mod:`tasks.digits`, split seed ``seed``), optionally the first ``train_samples`` /
    ``val_samples`` of each split (the splits are stratified and shuffled, so a prefix keeps every class)."""
    from tasks.digits import DigitsConfig, load_digits_split

    for name, v in (("train_samples", train_samples), ("val_samples", val_samples)):
        if v is not None and v < 1:
            raise ValueError(f"digits_task: {name}={v} must be >= 1 (or None for the whole split)")
    tr, va = load_digits_split("train", DigitsConfig(seed=seed)), load_digits_split("val", DigitsConfig(seed=seed))
    source = json.dumps({"task": "digits", "seed": seed, "train_samples": train_samples, "val_samples": val_samples},
                        sort_keys=True)
    return TaskData(x_train=tr.images[:train_samples], y_train=tr.y[:train_samples], x_val=va.images[:val_samples],
                    y_val=va.y[:val_samples], source=source)


# task name -> loader(**arguments recorded in TaskData.source); one registration per task
TASKS: dict[str, Callable[..., TaskData]] = {"digits": digits_task}


def task_from_source(source: str) -> TaskData:
    """Load the task again from a :attr:`TaskData.source` (what a worker joining a study does)."""
    try:
        spec = dict(json.loads(source))
        loader = TASKS[spec.pop("task")]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"task_from_source: cannot rebuild the task from {source!r}; known tasks: {sorted(TASKS)}") from None
    return loader(**spec)


def memory_of(model: nn.Module, space: SearchSpace) -> MemoryReport:
    """Memory of a network of ``space`` (weights + membrane state of one sample; module docstring)."""
    return spiking_memory(model, torch.zeros(1, space.channels, space.image_size, space.image_size))


@torch.no_grad()
def spike_kernel_score(model: nn.Module, x: torch.Tensor) -> float:
    """SNASNet's training-free score ``log |det K|`` of the module docstring on the batch ``x`` (B, C, H, W).

    Runs a copy of ``model`` (BatchNorm in training mode, as at initialization, without touching the model's own
    statistics). Returns ``-inf`` when K is singular (two inputs with identical patterns everywhere)."""
    net = copy.deepcopy(model).train()
    B = x.shape[0]
    K = torch.zeros(B, B, dtype=torch.float64)

    def hook(_m, _inp, out):  # out (T, B, ...) spikes
        c = out.detach().reshape(out.shape[0], B, -1).to(torch.float64)  # (T, B, N_l)
        K.add_((c @ c.transpose(1, 2)).sum(0))  # (T, B, N_l) x (T, N_l, B) -> (B, B)
        K.add_(((1 - c) @ (1 - c).transpose(1, 2)).sum(0))

    hooks = [m.register_forward_hook(hook) for m in net.modules() if is_neuron(m)]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    sign, logdet = torch.linalg.slogdet(K)
    return float(logdet) if float(sign) > 0 else -math.inf


@dataclass(frozen=True, kw_only=True)
class FastEvalConfig:
    """Short training of a candidate (the search's accuracy objective).

    Attributes:
        epochs: passes over the training data (>= 1).
        batch_size: samples per step (>= 1).
        lr: peak learning rate (> 0; AdamW + cosine, :class:`tasks.classifier.TrainConfig`).
        weight_decay: AdamW weight decay (>= 0).
        seed: seeds the initialization and the shuffling (every candidate the same).
        score_batch: inputs for the training-free score (>= 2; 0 skips the score).
        energy_batch: validation inputs the energy function sees (>= 1).
    """

    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0
    score_batch: int = 32
    energy_batch: int = 64

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"FastEvalConfig.{name}={getattr(self, name)!r} is invalid: {fix}")

        need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", "use an int >= 1")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "use an int >= 1")
        need(self.lr > 0, "lr", "use a number > 0")
        need(self.weight_decay >= 0, "weight_decay", "use a number >= 0")
        need(isinstance(self.score_batch, int) and (self.score_batch == 0 or self.score_batch >= 2), "score_batch",
             "use 0 (no training-free score) or an int >= 2")
        need(isinstance(self.energy_batch, int) and self.energy_batch >= 1, "energy_batch", "use an int >= 1")

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass(frozen=True, kw_only=True)
class CandidateResult:
    """What the fast evaluation measured for one candidate (``energy``: None without an energy function)."""

    genotype: Genotype
    val_accuracy: float
    memory: MemoryReport
    energy: float | None
    score: float | None
    params: int
    train_seconds: float

    def to_dict(self) -> dict:
        return {"genotype": self.genotype.to_dict(), "val_accuracy": self.val_accuracy, **self.memory.to_dict(),
                "energy": self.energy, "score": self.score, "params": self.params, "train_seconds": self.train_seconds}


def evaluate_candidate(genotype: Genotype, space: SearchSpace, data: TaskData, fast: FastEvalConfig, *,
                       energy_fn: EnergyFn | None = None, memory: MemoryReport | None = None,
                       progress: bool = False) -> CandidateResult:
    """Build ``genotype`` (seeded), score it untrained, train it briefly and measure it (module docstring)."""
    from tasks.classifier import TrainConfig, train_classifier

    torch.manual_seed(fast.seed)
    model = build(genotype, space)
    memory = memory or memory_of(model, space)
    score = spike_kernel_score(model, data.x_train[: fast.score_batch]) if fast.score_batch else None
    t0 = time.perf_counter()
    res = train_classifier(model, x_train=data.x_train, y_train=data.y_train, x_val=data.x_val, y_val=data.y_val,
                           config=TrainConfig(epochs=fast.epochs, batch_size=fast.batch_size, lr=fast.lr,
                                              weight_decay=fast.weight_decay, seed=fast.seed), progress=progress)
    seconds = time.perf_counter() - t0
    energy = float(energy_fn(model, data.x_val[: fast.energy_batch])) if energy_fn is not None else None
    return CandidateResult(genotype=genotype, val_accuracy=res.val_accuracy, memory=memory, energy=energy, score=score,
                           params=sum(p.numel() for p in model.parameters()), train_seconds=seconds)


def train_fully(genotype: Genotype, space: SearchSpace, data: TaskData, config, *, seed: int,
                progress: bool = False) -> tuple[nn.Module, float]:
    """``(model, best validation accuracy)`` after training ``genotype`` with ``config``
    (:class:`tasks.classifier.TrainConfig`, its seed replaced by ``seed``; the initialization is seeded too)."""
    from dataclasses import replace

    from tasks.classifier import train_classifier

    torch.manual_seed(seed)
    model = build(genotype, space)
    res = train_classifier(model, x_train=data.x_train, y_train=data.y_train, x_val=data.x_val, y_val=data.y_val,
                           config=replace(config, seed=seed), progress=progress)
    return model, res.val_accuracy


def spearman(a, b) -> float | None:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties); None when it is
    undefined (fewer than 3 pairs, or a sequence without any spread)."""
    from scipy.stats import spearmanr

    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) != len(b):
        raise ValueError(f"spearman: the sequences differ in length ({len(a)} vs {len(b)})")
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2 or any(map(math.isnan, a + b)):
        return None  # (-inf, e.g. a singular score kernel, ranks lowest)
    return float(spearmanr(a, b).statistic)
