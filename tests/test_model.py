"""The bundled PhaseGPT model: published state-dict layout (§1), phase dynamics (§2), config (§3), decoding."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_phase import pairwise_phase_forward

from model import GPT2Config, GPT2Model, PhaseAttention, StandardAttention
from model.model import PhaseDynamics

# The seed's "Load Full Checkpoint" snippet passes exactly these eight keys of the Phase A winner.
SEED_WINNER_KEYS = dict(vocab_size=65, d_model=768, n_layers=12, n_heads=12, use_phase_attention=True,
                        phase_layer_idx=[7], num_oscillators=32, coupling_strength=1.0)
# The Phase A winner's YAML model section as published, keys the code never read included (§3).
PUBLISHED_YAML_MODEL = dict(SEED_WINNER_KEYS, type="gpt2", d_ff=3072, max_seq_len=512, dropout=0.1,
                            natural_freq=1.0, dt=0.1, n_sync_steps=5)
TINY = dict(vocab_size=65, d_model=32, n_layers=2, n_heads=4, max_seq_len=64, dropout=0.0,
            use_phase_attention=True, phase_layer_idx=[1], num_oscillators=8)


def published_shapes(vocab, d_model, n_layers, n_heads, d_ff, max_seq_len, phase_layers, num_osc):
    """Every key and shape of a published model_state_dict, written from the §1 table."""
    shapes = {"token_embedding.weight": (vocab, d_model), "position_embedding.weight": (max_seq_len, d_model)}
    for i in range(n_layers):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            shapes[b + ln + ".weight"] = shapes[b + ln + ".bias"] = (d_model,)
        a = b + "attention."
        if i in phase_layers:
            shapes.update({a + "to_phase.weight": (n_heads * num_osc, d_model),
                           a + "to_phase.bias": (n_heads * num_osc,),
                           a + "natural_freq": (n_heads, num_osc), a + "coupling_matrix": (n_heads, 1, 1),
                           a + "last_R_param": (), a + "from_phase.weight": (d_model, n_heads * num_osc),
                           a + "from_phase.bias": (d_model,)})
        else:
            shapes.update({a + "qkv_proj.weight": (3 * d_model, d_model), a + "qkv_proj.bias": (3 * d_model,),
                           a + "out_proj.weight": (d_model, d_model), a + "out_proj.bias": (d_model,),
                           a + "causal_mask": (1, 1, max_seq_len, max_seq_len)})
        shapes.update({b + "ffn.0.weight": (d_ff, d_model), b + "ffn.0.bias": (d_ff,),
                       b + "ffn.2.weight": (d_model, d_ff), b + "ffn.2.bias": (d_model,)})
    shapes.update({"ln_f.weight": (d_model,), "ln_f.bias": (d_model,), "lm_head.weight": (vocab, d_model)})
    return shapes


def published_state_dict(shapes, max_seq_len):
    """A state dict as the published code would save it: random weights, tril masks, one shared head tensor."""
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}
    for k in sd:
        if k.endswith("causal_mask"):
            sd[k] = torch.tril(torch.ones(max_seq_len, max_seq_len)).view(1, 1, max_seq_len, max_seq_len)
    sd["lm_head.weight"] = sd["token_embedding.weight"]
    return sd


def tiny_model(**overrides) -> GPT2Model:
    torch.manual_seed(0)
    return GPT2Model(**dict(TINY, **overrides)).eval()


# ---- §1: the published state-dict layout ----

def test_seed_call_builds_the_winner_with_every_published_key_and_shape():
    with torch.device("meta"):  # shapes only: no 85M-parameter allocation
        model = GPT2Model(**SEED_WINNER_KEYS)
    expected = published_shapes(65, 768, 12, 12, 3072, 512, [7], 32)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.config == GPT2Config(**SEED_WINNER_KEYS, d_ff=3072, max_seq_len=512, dropout=0.1,
                                      natural_freq_std=0.1, phase_iterations=10, coupling_mode="original")


def test_published_state_dict_loads_strictly_into_the_winner_layout_at_small_width():
    config = dict(SEED_WINNER_KEYS, d_model=48, max_seq_len=40)  # 12 layers, phase layer 7, 4·d_model FFN
    shapes = published_shapes(65, 48, 12, 12, 192, 40, [7], 32)
    sd = published_state_dict(shapes, 40)
    model = GPT2Model(**config)
    model.load_state_dict(sd, strict=True)
    got = model.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert model.lm_head.weight is model.token_embedding.weight  # still tied after loading
    assert isinstance(model.blocks[7].attention, PhaseAttention)
    assert all(isinstance(model.blocks[i].attention, StandardAttention) for i in range(12) if i != 7)


def test_buffers_and_initialisation_follow_the_published_code():
    model = GPT2Model(**dict(TINY, d_model=128, coupling_strength=-0.5, natural_freq_std=0.3))
    sd = model.state_dict()
    assert torch.equal(sd["blocks.0.attention.causal_mask"][0, 0], torch.ones(64, 64).tril())
    assert sd["blocks.1.attention.last_R_param"].shape == ()
    assert torch.equal(sd["blocks.1.attention.coupling_matrix"], torch.full((4, 1, 1), -0.5))
    qkv = sd["blocks.0.attention.qkv_proj.weight"]
    assert abs(qkv.std().item() - 0.02) < 0.002 and abs(qkv.mean().item()) < 0.002
    assert not sd["blocks.0.attention.qkv_proj.bias"].any() and not sd["blocks.1.ffn.0.bias"].any()
    assert torch.equal(sd["ln_f.weight"], torch.ones(128)) and not sd["ln_f.bias"].any()
    wide = PhaseAttention(64, 12, 32, 1.0, 0.3, 10, 0.0)  # 384 frequencies: enough to see the std
    assert abs(wide.natural_freq.std().item() - 0.3) < 0.05


def test_lm_head_is_tied_to_the_token_embedding():
    model = tiny_model()
    assert model.lm_head.weight.data_ptr() == model.token_embedding.weight.data_ptr()
    with torch.no_grad():
        model.token_embedding.weight[3].fill_(1.0)
    assert torch.equal(model.lm_head.weight[3], torch.ones(32))


def test_standard_attention_splits_qkv_in_published_order_and_masks_the_future():
    torch.manual_seed(0)
    attn = StandardAttention(32, 4, 16, 0.0)
    x = torch.randn(2, 10, 32)
    q, k, v = attn.qkv_proj(x).chunk(3, dim=-1)  # q, k, v in that order, then heads
    q, k, v = (t.view(2, 10, 4, 8).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    scores = scores.masked_fill(attn.causal_mask[:, :, :10, :10] == 0, float("-inf"))
    expected = attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, 32))
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


# ---- §2: the phase layer ----

@pytest.mark.parametrize("mode", ["original", "causal"])
@pytest.mark.parametrize("B, H, T, N", [(2, 4, 64, 8), (1, 2, 512, 4)])
def test_mean_field_matches_the_pairwise_form_forward_and_gradients(mode, B, H, T, N):
    torch.manual_seed(0)
    layer = PhaseAttention(32, H, N, 1.0, 0.1, 10, 0.0, coupling_mode=mode)
    x = torch.randn(B, T, 32, requires_grad=True)
    weights = torch.randn(B, T, 32)  # a loss that touches every output
    inputs = [x, *layer.parameters()]
    out, R = layer(x, return_R=True)
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    ref_out, ref_R = pairwise_phase_forward(layer, x)
    ref_grads = torch.autograd.grad((ref_out * weights).sum(), inputs)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(R, ref_R, atol=1e-5, rtol=0)
    for g, ref in zip(grads, ref_grads):  # gradients summed over B·T terms: compare at their own scale
        torch.testing.assert_close(g, ref, atol=1e-5 * ref.abs().max().item(), rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_hand_written_backward_equals_the_numerical_jacobian_in_float64(causal):
    torch.manual_seed(0)
    # phases well inside (-π, π) and small steps: no wrap-around, where the dynamics are not differentiable
    theta = (torch.rand(2, 3, 7, 4, dtype=torch.float64) * 2 - 1).requires_grad_()
    omega = (0.3 * torch.randn(3, 1, 4, dtype=torch.float64)).requires_grad_()
    K = torch.randn(3, 1, 1, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, o, k: PhaseDynamics.apply(t, o, k, 4, causal), (theta, omega, K))


def test_training_and_inference_forwards_agree_bit_for_bit():
    torch.manual_seed(0)
    for mode in ("original", "causal"):
        layer = PhaseAttention(32, 4, 8, 1.0, 0.1, 10, 0.0, coupling_mode=mode)
        x = torch.randn(2, 33, 32, requires_grad=True)
        with torch.no_grad():
            inference = layer(x)
        assert torch.equal(layer(x), inference)  # the autograd path runs the very same arithmetic


def test_order_parameter_is_one_for_identical_phases_and_kept_in_last_R_param():
    layer = PhaseAttention(16, 2, 4, 1.0, 0.1, 10, 0.0)
    with torch.no_grad():  # θ0 = 0 everywhere, ω = 0: nothing moves, all phases agree
        layer.to_phase.weight.zero_(), layer.to_phase.bias.zero_(), layer.natural_freq.zero_()
    _, R = layer(torch.randn(3, 7, 16), return_R=True)
    torch.testing.assert_close(R, torch.ones(3, 2))
    assert layer.last_R_param.item() == pytest.approx(1.0)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 40), K=st.floats(-3, 3), mode=st.sampled_from(["original", "causal"]), seed=st.integers(0, 99))
def test_order_parameter_lies_in_unit_interval_and_last_R_param_is_its_mean(T, K, mode, seed):
    torch.manual_seed(seed)
    layer = PhaseAttention(16, 3, 4, K, 0.1, 10, 0.0, coupling_mode=mode)
    _, R = layer(torch.randn(2, T, 16), return_R=True)
    assert R.shape == (2, 3)
    assert ((R >= 0) & (R <= 1 + 1e-6)).all()
    assert layer.last_R_param.item() == pytest.approx(R.mean().item())


@settings(max_examples=15, deadline=None)
@given(data=st.data(), mode=st.sampled_from(["original", "causal"]))
def test_only_the_original_mode_lets_a_later_token_change_earlier_logits(data, mode):
    model = tiny_model(coupling_mode=mode, coupling_strength=2.0)
    T = data.draw(st.integers(2, 24), label="T")
    ids = torch.tensor([data.draw(st.lists(st.integers(0, 64), min_size=T, max_size=T), label="ids")])
    s = data.draw(st.integers(1, T - 1), label="changed position")
    changed = ids.clone()
    changed[0, s] = data.draw(st.integers(0, 64).filter(lambda t: t != ids[0, s]), label="new token")
    with torch.no_grad():
        before, after = model(ids)[0][:, :s], model(changed)[0][:, :s]
    if mode == "causal":
        torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    else:
        assert (after - before).abs().max() > 1e-4


def test_phase_trigonometry_stays_float32_in_a_bfloat16_model():
    layer = PhaseAttention(16, 2, 4, 1.0, 0.1, 10, 0.0)
    x = torch.randn(1, 9, 16)
    reference = layer(x)
    layer.to(torch.bfloat16)
    out, R = layer(x.bfloat16(), return_R=True)
    assert out.dtype == torch.bfloat16 and R.dtype == torch.float32
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)


@pytest.mark.cuda
def test_phase_trigonometry_stays_float32_under_cuda_bf16_autocast():
    torch.manual_seed(0)
    layer = PhaseAttention(64, 4, 8, 1.0, 0.1, 10, 0.0).cuda()
    x = torch.randn(2, 128, 64, device="cuda")
    reference, reference_R = layer(x, return_R=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, R = layer(x, return_R=True)
    assert R.dtype == torch.float32
    torch.testing.assert_close(R, reference_R, atol=0.02, rtol=0)  # only to_phase ran in bf16
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["original", "causal"])
def test_model_compiles_without_graph_breaks(mode):
    model = tiny_model(coupling_mode=mode)
    ids, targets = torch.randint(0, 65, (2, 16)), torch.randint(0, 65, (2, 16))
    eager_loss = model(ids, targets)[1]
    compiled_loss = torch.compile(model, fullgraph=True)(ids, targets)[1]
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=0)
    eager_grad = torch.autograd.grad(eager_loss, model.blocks[1].attention.coupling_matrix)[0]
    compiled_grad = torch.autograd.grad(compiled_loss, model.blocks[1].attention.coupling_matrix)[0]
    torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-5, rtol=1e-4)


# ---- incremental decoding ----

def run_in_pieces(step, inputs, sizes):
    """Feed ``inputs`` [B, T, ...] to ``step(piece, state)`` in pieces of ``sizes``; join the outputs."""
    outputs, state = [], None
    for piece in inputs.split(sizes, dim=1):
        out, state = step(piece, state)
        outputs.append(out)
    return torch.cat(outputs, dim=1), state


@pytest.mark.parametrize("sizes", [[1] * 20, [7, 1, 5, 7]])
def test_stepping_the_causal_phase_layer_reproduces_the_full_forward(sizes):
    torch.manual_seed(0)
    layer = PhaseAttention(32, 4, 8, 1.5, 0.1, 10, 0.0, coupling_mode="causal")
    x = torch.randn(2, 20, 32)
    stepped, state = run_in_pieces(layer.step, x, sizes)
    assert state.length == 20 and state.cos_sum.shape == (10, 2, 4, 8)
    torch.testing.assert_close(stepped, layer(x), atol=1e-5, rtol=0)


def test_stepping_the_model_in_pieces_reproduces_the_full_forward():
    model = tiny_model(n_layers=3, phase_layer_idx=[1], coupling_mode="causal")
    ids = torch.randint(0, 65, (2, 30))
    with torch.no_grad():
        # a prompt, then single tokens and chunks after cached positions
        stepped, cache = run_in_pieces(model.step, ids, [5, 1, 1, 7, 1, 15])
        torch.testing.assert_close(stepped, model(ids)[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.step(torch.zeros(2, 35, dtype=torch.long), cache)


def test_original_mode_refuses_to_step():
    with pytest.raises(ValueError, match="cannot run incrementally"):
        tiny_model().step(torch.zeros(1, 3, dtype=torch.long))


# ---- forward contract, config and checkpoints ----

def test_loss_is_the_mean_cross_entropy_and_R_comes_per_phase_layer():
    model = tiny_model(n_layers=3, phase_layer_idx=[0, 2])
    ids, targets = torch.randint(0, 65, (2, 12)), torch.randint(0, 65, (2, 12))
    logits, loss, Rs = model(ids, targets, return_R=True)
    log_probs = logits.log_softmax(-1).gather(-1, targets[..., None])
    assert loss.item() == pytest.approx(-log_probs.mean().item(), rel=1e-5)
    assert model(ids)[1] is None
    assert [R.shape for R in Rs] == [(2, 4), (2, 4)]
    assert model.blocks[2].attention.last_R_param.item() == pytest.approx(Rs[1].mean().item())


def test_too_long_sequence_is_a_clear_error():
    with pytest.raises(ValueError, match="65 tokens is longer than max_seq_len 64"):
        tiny_model()(torch.zeros(1, 65, dtype=torch.long))


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = tiny_model(coupling_mode="causal", phase_iterations=4)
    ids = torch.randint(0, 65, (2, 16))
    torch.save({"model_state_dict": model.state_dict(), "config": {"model": model.config.to_dict()}},
               tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["config"]["model"]["coupling_mode"] == "causal"
    restored = GPT2Model(**ckpt["config"]["model"]).eval()
    restored.load_state_dict(ckpt["model_state_dict"], strict=True)
    assert restored.config == model.config
    with torch.no_grad():
        assert torch.equal(restored(ids)[0], model(ids)[0])


def test_published_yaml_keys_the_code_never_read_are_recorded_and_change_nothing():
    torch.manual_seed(0)
    plain = GPT2Model(**dict(TINY))
    torch.manual_seed(0)
    with_yaml_keys = GPT2Model(**dict(TINY, type="gpt2", natural_freq=1.0, dt=0.5, n_sync_steps=5))
    assert with_yaml_keys.config == plain.config and with_yaml_keys.config.phase_iterations == 10
    assert with_yaml_keys.config.ignored == {"type": "gpt2", "natural_freq": 1.0, "dt": 0.5, "n_sync_steps": 5}
    assert "n_sync_steps" not in with_yaml_keys.config.to_dict()
    ids = torch.randint(0, 65, (1, 8))
    with torch.no_grad():
        assert torch.equal(plain.eval()(ids)[0], with_yaml_keys.eval()(ids)[0])
    with torch.device("meta"):
        assert GPT2Model(**PUBLISHED_YAML_MODEL).config == GPT2Model(**SEED_WINNER_KEYS).config


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="unknown model config key.*n_sync_stepz"):
        GPT2Model(**dict(TINY, n_sync_stepz=5))
    with pytest.raises(ValueError, match="not both"):
        GPT2Model(config=GPT2Config(), d_model=64)


@pytest.mark.parametrize("bad, message", [
    (dict(coupling_mode="kuramoto"), "coupling_mode must be one of original, causal"),
    (dict(phase_layer_idx=[2]), r"phase_layer_idx \[2\] out of range: layers are 0..1"),
    (dict(phase_layer_idx=[1, 1]), "repeats a layer"),
    (dict(phase_layer_idx=1), "must be a list of layer numbers"),
    (dict(phase_layer_idx=[]), "names no layer"),
    (dict(d_model=30), r"d_model \(30\) must be divisible by n_heads \(4\)"),
    (dict(n_layers=0), "n_layers must be a positive integer"),
    (dict(num_oscillators=2.5), "num_oscillators must be a positive integer"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(use_phase_attention="yes"), "use_phase_attention must be true or false"),
])
def test_invalid_config_values_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        GPT2Config.from_dict(dict(TINY, **bad))


def test_config_defaults_and_dict_round_trip():
    config = GPT2Config(phase_layer_idx=None, d_model=64, n_heads=4)
    assert config.d_ff == 256 and config.phase_layer_idx == [] and config.phase_layers == []
    assert GPT2Config.from_dict(config.to_dict()) == config
    assert GPT2Config(**dict(TINY, use_phase_attention=False)).phase_layers == []
    assert GPT2Model(config=GPT2Config(**TINY)).config.phase_layers == [1]
