"""snn.nas: the space (genotypes, networks, the hand-designed ViT as a point), evaluation (memory, SNASNet score,
Spearman), the search (hard budget, infeasible budgets, resume after interruption, 2 worker processes)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from snn.models import Spikformer, SpikformerConfig
from snn.nas import (Cell, CellOp, FastEvalConfig, Genotype, InfeasibleBudgetError, SearchConfig, SearchSpace, TaskData,
                     TrialRecord, build, load_result, memory_of, run_search, spearman, spike_kernel_score,
                     spikformer_genotype)
from snn.nas.cells import CellContext, SpikingConvBlock, SpikingMLPBlock
from snn.nas.search import SearchResult
from snn.neurons import Engine, FusedNeuron, NeuronSpec

REPO = Path(__file__).resolve().parents[2]
TINY = SearchSpace(dim=(8, 16), heads=(1, 2), max_cells=2, timesteps=(2,), mlp_ratio=(1, 2))


def tiny_data(n_train: int = 64, n_val: int = 32) -> TaskData:
    from snn.nas import digits_task

    return digits_task(train_samples=n_train, val_samples=n_val)


def test_the_hand_designed_spikformer_is_a_point_of_the_space():
    torch.manual_seed(0)
    cfg = SpikformerConfig(engine="fused")
    ref = Spikformer(cfg)
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    for _ in range(2):  # non-trivial weights and BatchNorm statistics
        loss = torch.nn.functional.cross_entropy(ref(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    space = SearchSpace()
    g = spikformer_genotype(cfg)
    assert space.contains(g) and g.depth == 2 and all(c.op is CellOp.ATTN for c in g.cells)
    net = build(g, space)
    net.load_state_dict(ref.state_dict(), strict=True)  # the same parameter and buffer names and shapes
    ref.eval(), net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)  # the same operations in the same order
    assert memory_of(net, space).total_bytes == memory_of(ref, space).total_bytes


def test_genotype_json_round_trip_and_refusals():
    g = Genotype(timesteps=4, conv_stem=False, patch_size=2, dim=32, heads=2, neuron="plif",
                 cells=(Cell(op="conv", mlp_ratio=4), Cell(op="attn", mlp_ratio=1)))
    back = Genotype.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back == g and back.key() == g.key() and back.cells[0].op is CellOp.CONV
    with pytest.raises(ValueError, match="Genotype.heads=3"):
        Genotype(timesteps=4, conv_stem=False, patch_size=2, dim=32, heads=3, neuron="lif", cells=(Cell(op="attn", mlp_ratio=1),))
    with pytest.raises(ValueError, match="Genotype.heads=2 .*no attn cell"):
        Genotype(timesteps=4, conv_stem=False, patch_size=2, dim=32, heads=2, neuron="lif", cells=(Cell(op="mlp", mlp_ratio=1),))
    with pytest.raises(ValueError, match="Cell.op='skip'"):
        Cell(op="skip", mlp_ratio=1)
    with pytest.raises(ValueError, match="Genotype.from_dict: expected the keys"):
        Genotype.from_dict({"dim": 8})
    with pytest.raises(ValueError, match="SearchSpace.patch_size"):
        SearchSpace(patch_size=(3,))
    with pytest.raises(ValueError, match="SearchSpace.heads"):
        SearchSpace(dim=(12,), heads=(8,))
    with pytest.raises(ValueError, match="SearchSpace.ops"):
        SearchSpace(ops=("skip",))
    assert SearchSpace.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    assert "dim=24" in TINY.violations(Genotype(timesteps=2, conv_stem=True, patch_size=2, dim=24, heads=None,
                                                  neuron="lif", cells=()))[0]


def test_sampled_networks_classify_images_and_optuna_params_round_trip():
    import random

    import optuna

    space = SearchSpace()
    rng = random.Random(0)
    x = torch.rand(3, 1, 8, 8)
    for _ in range(4):
        g = space.sample(rng)
        assert space.contains(g)
        net = build(g, space)
        out = net(x)
        assert out.shape == (3, 10) and torch.isfinite(out).all()
        out.sum().backward()  # surrogate gradients reach the embedding
        assert net.patch.weight.grad is not None
        # enqueue -> suggest gives back the same genotype
        study = optuna.create_study(directions=["maximize"])
        study.enqueue_trial(space.params_of(g))
        assert space.suggest(study.ask()) == g


def test_conv_cells_mix_tokens_and_mlp_cells_do_not():
    torch.manual_seed(0)
    ctx = CellContext(dim=8, grid=(4, 4), heads=None, neuron=NeuronSpec(tau=2.0, v_reset=0.0), attn_threshold=0.5,
                      engine=Engine.FUSED)
    u = torch.zeros(2, 1, 16, 8)  # (T, B, N, D): silent
    v = u.clone()
    v[:, :, 5] = 10.0  # token 5 (grid position (1, 1)) fires on every channel, the others stay silent
    conv = SpikingConvBlock(ctx, 2).eval()
    with torch.no_grad():
        conv.dw.weight.fill_(3.0)  # a neighbour's spike drives a token over threshold (3 / tau >= 1)
    for block, mixes in ((SpikingMLPBlock(ctx, 2).eval(), False), (conv, True)):
        with torch.no_grad():
            d = (block(v) - block(u)).abs().sum(dim=(0, 1, 3)).view(4, 4)  # change per token on the grid
        assert d[1, 1] > 0
        neighbours = d[0:3, 0:3].sum() - d[1, 1]
        assert (neighbours > 0) == mixes and d[3, 3] == 0, type(block).__name__  # 3x3: reaches neighbours only


def _all_genotypes(space: SearchSpace):
    ops = [o for o in space.ops if o is not CellOp.SKIP]
    for T, stem, p, D, kind in itertools.product(space.timesteps, space.conv_stem, space.patch_size, space.dim, space.neuron):
        for depth in range(space.max_cells + 1):
            for cells in itertools.product(itertools.product(ops, space.mlp_ratio), repeat=depth):
                yield Genotype(timesteps=T, conv_stem=stem, patch_size=p, dim=D, heads=None, neuron=kind,
                               cells=tuple(Cell(op=o, mlp_ratio=r) for o, r in cells))


def test_smallest_is_the_least_memory_point_by_brute_force():
    space = SearchSpace(dim=(8, 16), heads=(1,), max_cells=1, timesteps=(2,), mlp_ratio=(1, 2), ops=("mlp", "conv", "skip"))
    mem = lambda g: memory_of(build(g, space), space).total_bytes  # noqa: E731
    brute = min(mem(g) for g in _all_genotypes(space))
    g, m = space.smallest(mem)
    assert m == brute and space.contains(g)
    no_skip = SearchSpace(dim=(8, 16), heads=(1,), max_cells=1, timesteps=(2,), mlp_ratio=(1, 2), ops=("mlp", "conv"))
    brute = min(mem(g) for g in _all_genotypes(no_skip) if g.depth == 1)
    g, m = no_skip.smallest(mem)
    assert m == brute and g.depth == 1


class _OneLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lif = FusedNeuron(NeuronSpec(tau=2.0, v_reset=0.0))

    def forward(self, x):  # (B, n) -> (T=3, B, n) spikes
        return self.lif(x.unsqueeze(0).expand(3, *x.shape))


def test_spike_kernel_score_is_the_log_det_of_the_hamming_kernel():
    torch.manual_seed(0)
    x = torch.rand(5, 40) * 3
    net = _OneLayer()
    spikes = net(x).numpy()  # (T, B, n)
    n = spikes.shape[-1]
    K = np.zeros((5, 5))
    for t in range(spikes.shape[0]):
        for i, j in itertools.product(range(5), repeat=2):
            K[i, j] += n - np.sum(spikes[t, i] != spikes[t, j])  # N_A - Hamming distance
    assert spike_kernel_score(net, x) == pytest.approx(np.linalg.slogdet(K)[1], rel=1e-9)
    assert spike_kernel_score(net, x[:1].repeat(3, 1)) == -math.inf  # identical patterns: singular kernel


def test_spearman_with_ties_and_undefined_cases():
    a, b = [1.0, 2.0, 2.0, 3.0, 5.0], [10.0, 30.0, 20.0, 40.0, 35.0]
    ra, rb = np.array([1, 2.5, 2.5, 4, 5]), np.array([1, 3, 2, 5, 4])  # average ranks by hand
    expected = np.corrcoef(ra, rb)[0, 1]
    assert spearman(a, b) == pytest.approx(expected, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2, 3], [1, 2])


def _rec(number, acc, mem, energy=1.0):
    return TrialRecord(number=number, state="COMPLETE", genotype=None, memory_bytes=mem, feasible=True, val_accuracy=acc,
                       energy=energy, score=None, params=None, train_seconds=None, worker=None, reason=None)


def test_pareto_best_and_correlation_sample_on_known_trials():
    trials = (_rec(0, 0.9, 100), _rec(1, 0.8, 50), _rec(2, 0.7, 60), _rec(3, 0.9, 100, energy=0.5), _rec(4, 0.5, 10),
              _rec(5, 0.6, 40), _rec(6, 0.3, 5))
    r = SearchResult(study_name="s", settings={"budget_bytes": 1000}, trials=trials)
    assert sorted(t.number for t in r.pareto()) == [1, 3, 4, 5, 6]  # 0: same as 3 but more energy; 2: worse than 1
    assert r.best().number == 3  # ties with 0 on accuracy and memory; less energy
    sample = r.sample_for_correlation(4, top=2)
    assert [t.number for t in sample[:2]] == [0, 3] and {t.number for t in sample[2:]} == {1, 6}  # spread: best and worst of the rest
    assert len(r.sample_for_correlation(99, top=2)) == 7


def test_an_impossible_budget_is_reported_with_the_closest_candidate(tmp_path):
    smallest_g, smallest_m = TINY.smallest(lambda g: memory_of(build(g, TINY), TINY).total_bytes)
    with pytest.raises(InfeasibleBudgetError) as e:
        run_search(TINY, tiny_data(), config=SearchConfig(budget_bytes=100, n_trials=2, storage=f"sqlite:///{tmp_path}/nas.db"),
                   fast=FastEvalConfig(epochs=1), progress=False)
    assert isinstance(e.value, ValueError) and e.value.closest == smallest_g and e.value.closest_bytes == smallest_m
    assert "budget of 100 bytes" in str(e.value) and f"{smallest_m:,.0f} bytes" in str(e.value)
    assert not (tmp_path / "nas.db").exists()  # refused before any study or training


def test_search_keeps_the_budget_and_resumes_without_redoing_trials(tmp_path):
    big = Genotype(timesteps=2, conv_stem=True, patch_size=2, dim=16, heads=2, neuron="lif",
                   cells=(Cell(op="attn", mlp_ratio=2), Cell(op="attn", mlp_ratio=2)))
    budget = 20_000.0
    assert memory_of(build(big, TINY), TINY).total_bytes > budget
    calls = []

    def energy(model, x, fail_at=None):
        calls.append(model.genotype)
        if len(calls) == fail_at:
            raise RuntimeError("simulated interruption")
        return float(sum(p.numel() for p in model.parameters()))

    cfg = dict(budget_bytes=budget, storage=f"sqlite:///{tmp_path}/nas.db", study_name="resume", seed=3, n_startup_trials=2)
    kw = dict(fast=FastEvalConfig(epochs=1, score_batch=8), energy_name="test:energy", progress=False)
    data = tiny_data()
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run_search(TINY, data, config=SearchConfig(n_trials=5, **cfg), enqueue=(big,),
                   energy_fn=lambda m, x: energy(m, x, fail_at=3), **kw)
    first = load_result(cfg["storage"], "resume")
    done_first = {t.number: t.val_accuracy for t in first.complete()}
    assert len(done_first) == 2 and [t.state for t in first.trials].count("FAIL") == 1
    calls.clear()
    res = run_search(TINY, data, config=SearchConfig(n_trials=5, **cfg), energy_fn=energy, **kw)
    assert len(res.complete()) == 5 and len(calls) == 3  # only the missing 3 were trained
    assert {t.number: t.val_accuracy for t in res.complete() if t.number in done_first} == done_first
    assert all(t.memory_bytes <= budget and t.feasible for t in res.complete())
    over = [t for t in res.trials if t.state == "PRUNED" and t.reason == "over memory budget"]
    assert over and over[0].genotype == big and over[0].val_accuracy is None and over[0].memory_bytes > budget
    assert all(t.energy == float(t.params) for t in res.complete())  # the third objective is the energy function's
    with pytest.raises(ValueError, match="budget_bytes"):  # a worker with other settings may not join
        run_search(TINY, data, config=SearchConfig(n_trials=5, **{**cfg, "budget_bytes": 30_000.0}), energy_fn=energy, **kw)


def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    (tmp_path / "space.json").write_text(json.dumps(TINY.to_dict()))
    storage = f"sqlite:///{tmp_path}/nas.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--storage", storage, "--study", "shared"]
    run = lambda *a: subprocess.run([sys.executable, "-m", "snn.nas", *a], cwd=REPO, env=env, capture_output=True,  # noqa: E731
                                    text=True, timeout=240)
    created = run("create", *common, "--budget-bytes", "30000", "--space", str(tmp_path / "space.json"), "--epochs", "1",
                  "--train-samples", "128", "--val-samples", "32")
    assert created.returncode == 0, created.stderr
    workers = [subprocess.Popen([sys.executable, "-m", "snn.nas", "worker", *common, "--trials", "8", "--seed", str(s),
                                 "--threads", "1", "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for s in (1, 2)]
    outs = [w.communicate(timeout=240) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-2000:] for o in outs]
    res = load_result(storage, "shared")
    numbers = [t.number for t in res.trials]
    assert len(numbers) == len(set(numbers))
    assert len(res.complete()) == 8
    assert len({t.worker for t in res.complete()}) == 2  # both processes trained candidates
    assert all(t.memory_bytes <= 30000 for t in res.complete())
    report = run("report", *common, "--json", str(tmp_path / "r.json"))
    assert report.returncode == 0 and "pareto #" in report.stdout
    assert json.loads((tmp_path / "r.json").read_text())["counts"]["COMPLETE"] == 8
    missing = run("worker", "--storage", storage, "--study", "nope", "--trials", "1")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
