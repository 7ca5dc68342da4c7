"""The shared training loop: schedule, checkpoints, exact resume after an interruption, DDP == one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tasks.dist import DistInfo, shard
from tasks.training import CHECKPOINT_DIR, LoopConfig, load_checkpoint_step, train_loop
from tasks.io import load_tensors

REPO = Path(__file__).resolve().parents[2]


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(64, 8, generator=g), torch.randn(8, 3, generator=g)
    y = x @ w

    def batch_fn(step: int, rank: int, world: int):
        idx = torch.arange(16) + (step % 4) * 16
        return x[idx][shard(16, DistInfo(rank, world))], y[idx][shard(16, DistInfo(rank, world))]

    def loss_fn(model, batch):
        return nn.functional.mse_loss(model(batch[0]), batch[1])

    return batch_fn, loss_fn


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 3))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="warmup_steps"):
        LoopConfig(steps=10, lr=1e-3, warmup_steps=10)
    with pytest.raises(ValueError, match="LoopConfig.lr"):
        LoopConfig(steps=10, lr=0.0)


def test_schedule_warmup_then_cosine_to_ten_percent():
    c = LoopConfig(steps=110, lr=0.5, warmup_steps=10)
    assert c.lr_at(0) == pytest.approx(0.05) and c.lr_at(9) == pytest.approx(0.5)
    assert c.lr_at(10) == pytest.approx(0.5)
    assert c.lr_at(110) == pytest.approx(0.05)
    assert all(c.lr_at(s) >= c.lr_at(s + 1) for s in range(10, 110))


def test_schedule_restarts_for_a_second_stage():
    c = LoopConfig(steps=150, lr=0.5, warmup_steps=10, restart_at=100)
    one = LoopConfig(steps=100, lr=0.5, warmup_steps=10)
    two = LoopConfig(steps=50, lr=0.5, warmup_steps=10)
    assert [c.lr_at(s) for s in range(100)] == [one.lr_at(s) for s in range(100)]
    assert [c.lr_at(100 + s) for s in range(50)] == [two.lr_at(s) for s in range(50)]
    with pytest.raises(ValueError, match="restart_at"):
        LoopConfig(steps=150, lr=0.5, warmup_steps=10, restart_at=145)


def test_training_reduces_loss_and_writes_checkpoint(tmp_path):
    batch_fn, loss_fn = _problem()
    model = _model()
    res = train_loop(model, batch_fn=batch_fn, loss_fn=loss_fn, out_dir=tmp_path, progress=False,
                     config=LoopConfig(steps=60, lr=1e-2, warmup_steps=5),
                     evaluate=lambda m: {"mse": float(loss_fn(m, batch_fn(0, 0, 1)))})
    assert res.losses[-1][1] < 0.5 * res.losses[0][1]
    assert res.evals[-1][0] == 60 and res.final_eval["mse"] < res.losses[0][1]
    assert load_checkpoint_step(tmp_path) == 60
    assert set(os.listdir(tmp_path / CHECKPOINT_DIR)) == {"model.safetensors", "optimizer.safetensors", "trainer_state.json"}


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_exactly(tmp_path):
    batch_fn, loss_fn = _problem()
    cfg = LoopConfig(steps=20, lr=1e-2, warmup_steps=3, checkpoint_every=5, weight_decay=0.01)
    reference = _model()
    train_loop(reference, batch_fn=batch_fn, loss_fn=loss_fn, config=cfg, out_dir=None, progress=False)

    def crashing(step, rank, world):
        if step == 13:
            raise _Interrupt
        return batch_fn(step, rank, world)

    with pytest.raises(_Interrupt):
        train_loop(_model(), batch_fn=crashing, loss_fn=loss_fn, config=cfg, out_dir=tmp_path, progress=False)
    assert load_checkpoint_step(tmp_path) == 10  # the last checkpoint before the crash
    resumed = _model()  # fresh weights: everything must come from the checkpoint
    res = train_loop(resumed, batch_fn=batch_fn, loss_fn=loss_fn, config=cfg, out_dir=tmp_path, progress=False)
    assert res.start_step == 10 and [s for s, _ in res.losses] == list(range(1, 21))
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)  # same arithmetic in the same order: bit-identical


def test_resume_refuses_a_changed_config(tmp_path):
    batch_fn, loss_fn = _problem()
    train_loop(_model(), batch_fn=batch_fn, loss_fn=loss_fn, config=LoopConfig(steps=4, lr=1e-2), out_dir=tmp_path,
               progress=False)
    with pytest.raises(ValueError, match="lr="):
        train_loop(_model(), batch_fn=batch_fn, loss_fn=loss_fn, config=LoopConfig(steps=8, lr=2e-2),
                   out_dir=tmp_path, progress=False)


def test_shard_needs_an_even_split():
    assert shard(8, DistInfo(1, 2)) == slice(4, 8)
    with pytest.raises(ValueError, match="divisible"):
        shard(7, DistInfo(0, 2))


def _train_cli(out: Path, *, nproc: int) -> dict[str, torch.Tensor]:
    # 3 vision pre-training steps (the language model gets no gradient: DDP must allow unused parameters), 3 full
    args = ["-m", "ann.train", "synthmed", "--size", "small", "--vision-steps", "3", "--steps", "3", "--images-per-batch", "8",
            "--n-train", "32", "--n-val", "8", "--n-test", "8", "--eval-every", "0", "--checkpoint-every", "3",
            "--quiet", "--out", str(out)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + args
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_tensors(out / "model" / "model.safetensors")


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    single = _train_cli(tmp_path / "one", nproc=1)
    double = _train_cli(tmp_path / "two", nproc=2)
    assert single.keys() == double.keys()
    for k in single:
        # Same global batch, equal shards, gradients averaged by DDP: equal up to float summation order,
        # amplified a little by 6 Adam steps (Adam divides by sqrt of tiny second moments early on).
        torch.testing.assert_close(double[k], single[k], atol=1e-4, rtol=1e-3, msg=k)
