import json

import pytest
import torch
from spikingjelly.activation_based import layer, neuron
from torch import nn

from neurohw.workload import Numeric, OpKind, Workload, trace


def test_ann_mlp_macs_params_and_elementwise():
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    w = trace(net, torch.randn(7, 10), name="mlp")
    gemms = [op for op in w.ops if op.kind is OpKind.GEMM]
    assert [(op.m, op.k, op.n) for op in gemms] == [(1, 10, 20), (1, 20, 5)]
    assert w.macs == 10 * 20 + 20 * 5
    assert w.params == sum(p.numel() for p in net.parameters())
    assert [op.kind for op in w.ops] == [OpKind.GEMM, OpKind.ELEMENTWISE, OpKind.GEMM]
    assert w.sops == 0 and w.firing_rate is None and w.timesteps == 1


def test_token_rows_count_per_inference():
    w = trace(nn.Linear(8, 4), torch.randn(3, 5, 8))  # 3 sequences of 5 tokens
    assert w.ops[0].m == 5 and w.macs == 5 * 8 * 4


def test_synaptic_ops_equal_spike_count_times_fan_out():
    T, B = 4, 3
    lin = nn.Linear(6, 9)
    spikes = (torch.rand(T, B, 6) < 0.3).float()
    w = trace(lin, spikes, timesteps=T)
    # trace divides by the batch of its input, which for a raw module is the leading (time) dim;
    # so build the expectation the same way: per "inference" = per leading-dim element
    op = w.ops[0]
    assert op.kind is OpKind.SYNAPTIC
    assert op.sops == pytest.approx(float(spikes.sum()) * 9 / T)
    assert op.input_density == pytest.approx(float(spikes.mean()))


class _Direct(nn.Module):
    """Direct encoding wrapper: (B, F) -> (T, B, F) -> net -> mean over T."""

    def __init__(self, net, T):
        super().__init__()
        self.net, self.T = net, T

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        return self.net(x.unsqueeze(0).expand(self.T, *x.shape)).mean(0)


def test_spiking_mlp_neurons_sops_and_time_constant_encoder():
    torch.manual_seed(0)
    T, B = 5, 4
    net = nn.Sequential(nn.Linear(6, 12), neuron.IFNode(step_mode="m"), nn.Linear(12, 3))
    net[0].weight.data.abs_()  # make the hidden layer fire
    spikes = []
    net[1].register_forward_hook(lambda m, i, o: spikes.append(o))
    x = torch.rand(B, 6)
    w = trace(_Direct(net, T), x, timesteps=T)
    enc, neu, out = w.ops
    assert enc.kind is OpKind.GEMM and enc.macs == 6 * 12  # constant input over T: computed once
    assert neu.kind is OpKind.NEURON and neu.neurons == 12 and neu.elements == 12 * T
    s = spikes[-1]
    assert neu.spikes == pytest.approx(float(s.sum()) / B)
    assert w.firing_rate == pytest.approx(float(s.mean()))
    assert out.kind is OpKind.SYNAPTIC and out.sops == pytest.approx(float(s.sum()) * 3 / B)
    assert out.bias_adds == T * 3  # the bias current is added at every timestep


class _SingleStep(nn.Module):
    """The same spiking MLP run step by step: T calls of every layer per forward."""

    def __init__(self, net, T):
        super().__init__()
        self.net, self.T = net, T

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        return torch.stack([self.net(x) for _ in range(self.T)]).mean(0)


def test_a_synaptic_op_makes_one_pass_per_traced_forward():
    from neurohw.workload.trace import Tracer

    torch.manual_seed(0)
    T, B = 4, 3
    multi = nn.Sequential(nn.Linear(6, 12), neuron.IFNode(step_mode="m"), nn.Linear(12, 3))
    single = nn.Sequential(nn.Linear(6, 12), neuron.IFNode(step_mode="s"), nn.Linear(12, 3))
    single.load_state_dict(multi.state_dict())
    for net in (multi, single):
        net[0].weight.data.abs_()
    x = torch.rand(B, 6)
    for model in (_Direct(multi, T), _SingleStep(single, T)):
        (out,) = [op for op in trace(model, x, timesteps=T).ops if op.kind is OpKind.SYNAPTIC]
        assert out.passes == pytest.approx(1.0)  # one call of T steps, or T calls of one
    tracer = Tracer(_Direct(multi, T), batch=B, timesteps=T)  # e.g. three steps of a decode
    for _ in range(3):
        tracer.run(lambda: tracer.model(x))
    tracer.close()
    w = tracer.workload(name="steps", numeric=Numeric.INT, weight_bits=8, act_bits=8, state_bits=16)
    assert [op.passes for op in w.ops if op.kind is OpKind.SYNAPTIC] == [3.0]


def test_conv_sops_are_exact():
    torch.manual_seed(0)
    T, B = 3, 2
    conv = layer.Conv2d(2, 4, 3, stride=2, padding=1, step_mode="m")
    x = (torch.rand(T, B, 2, 7, 7) < 0.2).float()
    w = trace(conv, x, timesteps=T)
    # brute force: every (spike, output position whose receptive field holds it, output channel)
    xp = nn.functional.pad(x.flatten(0, 1), (1, 1, 1, 1))
    count = 0.0
    for i in range(4):
        for j in range(4):
            count += float(xp[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].sum()) * 4
    assert w.ops[0].sops == pytest.approx(count / T)  # leading dim T is the traced "batch"


def test_json_round_trip_and_precision_override():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    w = trace(net, torch.randn(2, 4))
    back = Workload.from_dict(json.loads(json.dumps(w.to_dict())))
    assert back == w
    q = w.with_precision(numeric=Numeric.INT, weight_bits=8, act_bits=8)
    assert all(op.weight_bits == 8 and op.numeric is Numeric.INT for op in q.ops) and q.macs == w.macs
    with pytest.raises(ValueError, match="IR version"):
        Workload.from_dict({**w.to_dict(), "ir_version": 99})


def test_untraced_modules_are_listed_and_bad_input_refused():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    w = trace(net, torch.randn(2, 4))
    assert w.untraced == ("1 (BatchNorm1d)",)
    with pytest.raises(ValueError, match="timesteps=0"):
        trace(net, torch.randn(2, 4), timesteps=0)
    with pytest.raises(ValueError, match="non-empty batch"):
        trace(net, torch.randn(0, 4))


# ------------------------------------------------------------------------------------ transformer tracing
def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def test_decode_trace_attention_lengths_kv_cache_and_macs():
    from neurohw.workload.reference import trace_decode

    model = _tiny_llama()
    P, N, L, H, HKV, D, HID, FF = 5, 4, 2, 4, 2, 8, 32, 48
    w = trace_decode(model, prompt_len=P, new_tokens=N)
    att = [op for op in w.ops if op.kind is OpKind.ATTENTION]
    # one prefill call (L_q = P) and N - 1 single-token steps per layer, the cache growing by one each step
    assert sorted({(op.q_len if op.q_len == P else 1, op.kv_len) for op in att}) == [(1, P + i) for i in range(1, N)] + [(P, P)]
    assert sum(op.macs for op in att) == L * (2 * H * P * P * D + sum(2 * H * (P + i) * D for i in range(1, N)))
    writes = sum(op.elements for op in w.ops if op.kind is OpKind.KV_WRITE)
    reads = sum(op.elements for op in w.ops if op.kind is OpKind.KV_READ)
    assert writes == L * 2 * HKV * D * (P + N - 1)  # every position's key and value written once
    assert reads == L * 2 * HKV * D * sum(P + i - 1 for i in range(1, N))  # step i re-reads the P + i - 1 past ones
    # projections + MLP on every token, the LM head (tied to the embedding) on the last position of every call
    per_token = L * (HID * H * D + 2 * HID * HKV * D + H * D * HID + 3 * HID * FF)
    lm_head = N * HID * 64
    assert sum(op.macs for op in w.ops if op.kind is OpKind.GEMM) == (P + N - 1) * per_token + lm_head
    assert w.params == sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert {op.function for op in w.ops if op.kind is OpKind.NORM} == {"rmsnorm"}
    assert {"silu", "mul", "add"} <= {op.function for op in w.ops if op.kind is OpKind.ELEMENTWISE}
    assert w.untraced == ()


def test_vit_trace_attention_norms_gelu_and_fusion_facts():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, attn_implementation="sdpa")
    w = trace(ViTModel(cfg, add_pooling_layer=False), {"pixel_values": torch.rand(3, 3, 32, 32)}, name="vit")
    L, D, T = 2, 8, (32 // 8) ** 2 + 1
    att = [op for op in w.ops if op.kind is OpKind.ATTENTION]
    assert len(att) == L and all((op.heads, op.q_len, op.kv_len, op.head_dim) == (4, T, T, D) for op in att)
    assert all(op.macs == 2 * 4 * T * T * D for op in att)
    by = {op.name.split(".")[-1] if "layers.0" in op.name else None: op for op in w.ops}
    assert by["layernorm_before"].kind is OpKind.NORM and by["layernorm_before"].function == "layernorm"
    gelu = next(op for op in w.ops if op.function == "gelu")
    fc1 = next(op for op in w.ops if op.name.endswith("layers.0.mlp.fc1"))
    # fc1 -> GELU: GELU takes fc1's output from the op just before it, its only reader
    assert gelu.fused_in_elements == gelu.in_elements == T * 64 and fc1.output_on_chip
    # the residual add's output is read by the next LayerNorm and by the next residual add: it must be written
    add = next(op for op in w.ops if op.name.endswith("layers.0.add"))
    assert add.function == "add" and not add.output_on_chip
    assert w.params == sum(p.numel() for n, p in ViTModel(cfg, add_pooling_layer=False).named_parameters()
                           if "cls_token" not in n and "position_embeddings" not in n)


def test_functional_matmul_softmax_layer_norm_are_recorded():
    class Eager(nn.Module):
        def forward(self, x):
            s = torch.matmul(x, x.transpose(-1, -2))  # (B, L, D) x (B, D, L) -> (B, L, L)
            p = s.softmax(-1)
            return nn.functional.layer_norm(p @ x, (x.shape[-1],))  # (B, L, L) x (B, L, D) -> (B, L, D)

    w = trace(Eager(), torch.randn(2, 5, 3))
    kinds = [(op.kind, op.function) for op in w.ops]
    assert kinds == [(OpKind.GEMM, "matmul"), (OpKind.SOFTMAX, "softmax"), (OpKind.GEMM, "matmul"), (OpKind.NORM, "layernorm")]
    assert w.ops[0].macs == 5 * 3 * 5 and w.ops[2].macs == 5 * 5 * 3
    assert w.ops[1].fused_in_elements == 25 and w.ops[0].output_on_chip  # softmax reads the scores on chip
    assert not w.ops[1].output_on_chip  # the probabilities go to a GEMM, which does not fuse its input


def test_activation_modules_are_named_by_their_function():
    net = nn.Sequential(nn.Linear(4, 4), nn.Hardtanh(), nn.Tanh(), nn.LeakyReLU(), nn.SiLU(), nn.GELU())
    w = trace(net, torch.randn(2, 4))
    assert [op.function for op in w.ops] == ["linear", "hardtanh", "tanh", "relu", "silu", "gelu"]


def test_ir_with_transformer_ops_round_trips_and_unknown_kinds_are_errors():
    from neurohw.workload.reference import trace_decode

    w = trace_decode(_tiny_llama(), prompt_len=3, new_tokens=2)
    assert Workload.from_dict(json.loads(json.dumps(w.to_dict()))) == w
    d = w.to_dict()
    d["ops"][0]["kind"] = "conv3d"
    with pytest.raises(ValueError, match="unknown kind 'conv3d'"):
        Workload.from_dict(d)
