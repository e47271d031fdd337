"""The language-model methods (torchslim.llm, issue 23) on a tiny random Llama built offline.

Layer-wise errors are ``||X W^T - X W'^T||`` with ``X`` each linear's inputs in the float
model on the calibration tokens; the model error is the logits' distance to the float model's.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import torchslim.llm.method as method
from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.graph import constraints, provenance
from torchslim.llm import gptq as gptq_module
from torchslim.llm.api import awq_, gptq_, rtn_, sparsegpt_, wanda_
from torchslim.llm.awq import scale_groups
from torchslim.llm.calibrate import calibration_batches, capture_inputs, decoder_blocks
from torchslim.llm.gptq import Clip, clipped_grid_params, obs_solve
from torchslim.llm.modules import LLM_QUANT, QuantizedLinear
from torchslim.llm.qweight import Grid, QuantizedWeight, grid_params, quantize_to_grid
from torchslim.llm.stage import stage_tokens
from torchslim.prune.nm import satisfies_nm
from torchslim.stages import STAGES, StageContext, run_stage

W3 = {"bits": 3, "group_size": 32}


def tiny_llama(outliers: bool = False, kv_heads: int = 2, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=kv_heads, vocab_size=256, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    if outliers:  # a few input channels 20x larger than the rest, as in trained LLMs
        with torch.no_grad():
            for block in model.model.layers:
                block.input_layernorm.weight[:4] = 20.0
                block.post_attention_layernorm.weight[4:8] = 20.0
    return model


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return torch.randint(256, (16, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def base() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture(scope="module")
def outlier() -> LlamaForCausalLM:
    return tiny_llama(outliers=True)


def linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.dequantized_weight() if isinstance(m, QuantizedLinear) else m.weight.detach()
            for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantizedLinear)) and n != "lm_head"}


def linear_inputs(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    xs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: xs.__setitem__(n, a[0].reshape(-1, a[0].shape[-1])))
               for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    return xs


def layer_errors(float_model: nn.Module, model: nn.Module, tokens: torch.Tensor) -> dict[str, float]:
    xs, w0, w1 = linear_inputs(float_model, tokens), linear_weights(float_model), linear_weights(model)
    return {n: float((xs[n] @ (w0[n] - w1[n]).T).norm()) for n in w0}


def logits_error(float_model: nn.Module, model: nn.Module, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        return float((float_model(tokens).logits - model(tokens).logits).norm())


def run_on_copy(verb, model, config, calib):
    work = copy.deepcopy(model)
    return work, verb(work, config, calibration=calib)


# -- the representation ------------------------------------------------------------------------------------
def test_quantized_linear_forward_is_linear_with_the_dequantized_weight_and_reloads():
    fc = nn.Linear(20, 6)
    qw = QuantizedWeight.from_float(fc.weight, Grid(bits=4, group_size=8))  # groups of 8, 8 and a tail of 4
    layer = QuantizedLinear.from_weight(qw, fc.bias)
    x = torch.randn(3, 5, 20)
    assert torch.equal(layer(x), F.linear(x, qw.dequantize(), fc.bias))
    assert torch.equal(layer.quantized_weight.codes, qw.codes) and layer.quantized_weight.n_groups == 3
    layer.codes[0, 0] = 15 - int(layer.codes[0, 0])  # the cache follows the buffers
    assert torch.equal(layer(x), F.linear(x, layer.quantized_weight.dequantize(), fc.bias))
    assert torch.equal(copy.deepcopy(layer)(x), layer(x))


def test_a_quantized_model_reloads_into_a_fresh_one_through_its_provenance(base, calib):
    model, _ = run_on_copy(gptq_, base, W3, calib)
    fresh = tiny_llama()
    provenance.replay(fresh, provenance.records(model), model.state_dict())
    fresh.load_state_dict(model.state_dict())
    assert isinstance(fresh.model.layers[1].mlp.up_proj, QuantizedLinear)
    assert torch.equal(fresh(calib).logits, model(calib).logits)
    assert len(provenance.latest(model, LLM_QUANT)["layers"]) == 1  # one record per swapped layer


# -- GPTQ ---------------------------------------------------------------------------------------------------
def test_gptq_beats_rtn_on_every_layer_and_on_the_logits(base, calib):
    rtn, _ = run_on_copy(rtn_, base, W3, calib)
    for cfg in ({**W3}, {**W3, "act_order": False, "true_sequential": False}, {**W3, "symmetric": True}, {**W3, "clip": True}):
        gptq, report = run_on_copy(gptq_, base, cfg, calib)
        rtn_cfg = rtn if not cfg.get("symmetric") else run_on_copy(rtn_, base, cfg, calib)[0]
        e_gptq, e_rtn = layer_errors(base, gptq, calib), layer_errors(base, rtn_cfg, calib)
        assert len(e_gptq) == 14 and all(e_gptq[n] < e_rtn[n] for n in e_rtn), (cfg, e_gptq, e_rtn)
        assert logits_error(base, gptq, calib) < 0.8 * logits_error(base, rtn_cfg, calib)
        assert {layer.action for layer in report.layers} == {"quantized"} and len(report.layers) == 14
        assert all(0 < layer.details["output_error"] < 1 and layer.details["clip"] is bool(cfg.get("clip")) for layer in report.layers)


def test_gptq_report_skips_the_head_and_states_calibration_and_peak_memory(base, calib):
    model, report = run_on_copy(gptq_, base, W3, [{"input_ids": calib[:8]}, calib[8:]])
    reasons = {s.name: s.reason for s in report.skipped}
    assert "output head is kept" in reasons["lm_head"] and isinstance(model.lm_head, nn.Linear)
    assert report.meta["calibration"] == {"sequences": 16, "tokens": 512}
    meta = report.meta  # resident memory: when it started <= sampled while it ran <= the process's peak
    assert 50 < meta["rss_before_mb"] <= meta["peak_rss_mb"] <= meta["process_peak_rss_mb"] and meta["seconds"] > 0
    again, _ = run_on_copy(gptq_, base, W3, calib)  # deterministic
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_gptq_handles_a_narrow_tail_group_dead_columns_and_act_order():
    torch.manual_seed(0)
    x = torch.randn(400, 40) @ torch.randn(40, 40)
    x[:, 7] = 0  # a dead input
    w = torch.randn(12, 40)
    h = 2 * x.T.double() @ x.double() / 400
    grid = Grid(bits=3, group_size=16)  # groups of 16, 16 and a tail of 8
    err = lambda q: float((x @ (w - q).T).square().sum())  # noqa: E731
    rtn = err(QuantizedWeight.from_float(w, grid).dequantize())
    for act_order in (False, True):
        solved = obs_solve(w, h, grid=grid, act_order=act_order, block_size=8)
        assert solved.quantized is not None and solved.quantized.scales.shape == (12, 3)
        assert torch.equal(solved.weight, solved.quantized.dequantize()) and err(solved.weight) < 0.9 * rtn
        assert torch.all(solved.weight[:, 7] == 0)


def test_clipped_grids_lower_the_error_through_the_hessian_on_heavy_tailed_weights():
    torch.manual_seed(0)
    x = torch.randn(400, 64) @ torch.randn(64, 64)
    w = torch.distributions.StudentT(3.0).sample((16, 64))  # outliers stretch min/max ranges
    h = 2 * x.T.double() @ x.double() / 400
    grid = Grid(bits=3, group_size=32)

    def row_errors(params: tuple[torch.Tensor, torch.Tensor], cols: slice) -> torch.Tensor:
        wg = w[:, cols]
        e = wg - (quantize_to_grid(wg, *params, grid) - params[1][:, None]) * params[0][:, None]
        return ((e @ h[cols, cols].float()) * e).sum(1)

    cols = slice(0, 32)  # one group rounded to nearest: never worse in any row (ratio 1 is a candidate), better overall
    clipped, plain = row_errors(clipped_grid_params(w[:, cols], grid, h[cols, cols], Clip()), cols), row_errors(grid_params(w[:, cols], grid), cols)
    assert torch.all(clipped <= plain * (1 + 1e-6)) and clipped.sum() < 0.9 * plain.sum()
    assert torch.equal(clipped_grid_params(w[:, cols], grid, h[cols, cols], Clip(max_shrink=0.0))[0], grid_params(w[:, cols], grid)[0])
    err = lambda q: float((x @ (w - q).T).square().sum())  # noqa: E731
    for act_order in (False, True):  # the whole solver: groups fitted as reached, and static groups
        with_clip = obs_solve(w, h, grid=grid, act_order=act_order, clip=Clip())
        assert with_clip.quantized is not None and torch.equal(with_clip.weight, with_clip.quantized.dequantize())
        assert err(with_clip.weight) < 0.97 * err(obs_solve(w, h, grid=grid, act_order=act_order).weight)


def test_gptq_names_the_layer_it_refuses(base, calib, monkeypatch):
    def boom(*_a, **_k):
        raise TransformRefusedError("the Hessian is not positive definite")
    monkeypatch.setattr(gptq_module, "gptq_quantize", boom)
    model = copy.deepcopy(base)
    with pytest.raises(TransformRefusedError, match=r"model\.layers\.0\.self_attn\.q_proj: the Hessian"):
        gptq_(model, W3, calibration=calib)
    assert all(isinstance(m, nn.Linear) for n, m in model.named_modules() if n.endswith("proj"))


# -- AWQ ----------------------------------------------------------------------------------------------------
def test_awq_beats_rtn_and_folds_its_scales_into_the_norms(outlier, calib):
    rtn, _ = run_on_copy(rtn_, outlier, W3, calib)
    awq, report = run_on_copy(awq_, outlier, W3, calib)
    awq_gptq, _ = run_on_copy(awq_, outlier, {**W3, "quantizer": "gptq"}, calib)
    e_rtn = logits_error(outlier, rtn, calib)
    assert logits_error(outlier, awq, calib) < 0.8 * e_rtn and logits_error(outlier, awq_gptq, calib) < 0.6 * e_rtn
    actions = {layer.name: layer for layer in report.layers}
    assert actions["model.layers.0.input_layernorm"].action == "scaled"
    assert not torch.equal(awq.model.layers[0].input_layernorm.weight, outlier.model.layers[0].input_layernorm.weight)
    q = actions["model.layers.0.self_attn.q_proj"].details
    assert q["scaled_into"] == "model.layers.0.input_layernorm" and q["alpha"] > 0
    assert actions["model.layers.0.mlp.down_proj"].details["scaled_into"] == "model.layers.0.mlp.up_proj"
    assert actions["model.layers.0.self_attn.o_proj"].details["scaled_into"] is None  # 2 kv heads for 4 heads


def test_awq_folds_v_into_o_only_without_grouped_query_attention():
    gqa, mha = tiny_llama(kv_heads=2, layers=1), tiny_llama(kv_heads=4, layers=1)
    names = ["self_attn.o_proj"]
    assert scale_groups(gqa.model.layers[0], names) == []
    assert [g.producer for g in scale_groups(mha.model.layers[0], names)] == ["self_attn.v_proj"]
    with pytest.raises(ConfigError, match="clip"):
        awq_(mha, {"quantizer": "gptq", "clip": True}, calibration=torch.zeros(1, 4, dtype=torch.long))


# -- SparseGPT, Wanda, magnitude ------------------------------------------------------------------------------
def row_zeros(model: nn.Module) -> set[int]:
    return {int(c) for w in linear_weights(model).values() for c in (w == 0).sum(1)}


def test_sparsegpt_keeps_exactly_the_requested_sparsity_and_beats_magnitude(base, calib):
    pruned, report = run_on_copy(sparsegpt_, base, {"sparsity": 0.5}, calib)
    mag, _ = run_on_copy(wanda_, base, {"score": "magnitude"}, None)
    assert row_zeros(pruned) == {32, 64} and row_zeros(mag) == {32, 64}  # half of every row of 64 and 128 inputs
    e_sp, e_mag = layer_errors(base, pruned, calib), layer_errors(base, mag, calib)
    assert all(e_sp[n] < e_mag[n] for n in e_mag)
    assert logits_error(base, pruned, calib) < logits_error(base, mag, calib)
    assert {layer.details["sparsity"] for layer in report.layers} == {0.5}
    masks = list(constraints.members(pruned, constraints.get("mask")))
    assert len(masks) == 14 and all(torch.equal(getattr(m, p) == 0, ~mask) for _, m, p, mask in masks)
    odd, _ = run_on_copy(sparsegpt_, base, {"sparsity": 0.3}, calib)
    assert row_zeros(odd) == {19, 38}  # round(0.3 * 64), round(0.3 * 128)


def test_sparsegpt_and_wanda_give_the_exact_2_4_pattern(base, calib):
    for verb in (sparsegpt_, wanda_):
        pruned, _ = run_on_copy(verb, base, {"granularity": "nm", "n": 2, "m": 4}, calib)
        for _, m, _, mask in constraints.members(pruned, constraints.get("mask")):
            assert bool((mask.view(mask.shape[0], -1, 4).sum(-1) == 2).all()) and satisfies_nm(m.weight, 2, 4)


def test_wanda_beats_magnitude_with_outlier_channels(outlier, calib):
    wanda, _ = run_on_copy(wanda_, outlier, {"sparsity": 0.5}, calib)
    mag, _ = run_on_copy(wanda_, outlier, {"score": "magnitude"}, None)
    assert row_zeros(wanda) == {32, 64}
    e_w, e_mag = layer_errors(outlier, wanda, calib), layer_errors(outlier, mag, calib)
    assert sum(e_w[n] < e_mag[n] for n in e_mag) >= 12 and sum(e_w.values()) < 0.6 * sum(e_mag.values())
    assert logits_error(outlier, wanda, calib) < logits_error(outlier, mag, calib)


def test_joint_sparsegpt_gptq_keeps_the_mask_and_the_grid(base, calib):
    joint, report = run_on_copy(sparsegpt_, base, {"granularity": "nm", "quantize": {"bits": 4, "group_size": 32}}, calib)
    layers = [m for m in joint.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 14 and {layer.action for layer in report.layers} == {"pruned+quantized"}
    for layer in layers:
        qw = layer.quantized_weight
        assert int(qw.codes.max()) <= 15 and satisfies_nm(qw.dequantize(), 2, 4)
    torch.manual_seed(0)
    x = torch.randn(300, 32) @ torch.randn(32, 32)
    w, h = torch.randn(10, 32), 2 * x.T.double() @ x.double() / 300
    for grid in (Grid(4, 16), Grid(4, 16, symmetric=True)):
        solved = obs_solve(w, h, grid=grid, sparsity=0.5)
        assert solved.mask is not None and solved.quantized is not None
        assert {int(c) for c in (~solved.mask).sum(1)} == {16}
        deq = solved.quantized.dequantize()
        assert torch.all(deq[~solved.mask] == 0) and torch.equal(deq, solved.weight)


# -- all or nothing, inputs, stages ---------------------------------------------------------------------------
def test_a_failure_half_way_through_apply_leaves_the_model_unchanged(base, calib, monkeypatch):
    model = copy.deepcopy(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    real = method.swap_quantized

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)
    monkeypatch.setattr(method, "swap_quantized", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        gptq_(model, W3, calibration=calib)
    assert len(calls) == 5 and provenance.records(model) == []
    assert all(isinstance(m, nn.Linear) for n, m in model.named_modules() if n.endswith("proj"))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_plan_runs_before_the_snapshot_and_a_failure_in_it_leaves_the_model_unchanged(base, calib, monkeypatch):
    """The methods calibrate copies of one block at a time, so no model-sized snapshot is held while they plan
    (SmolLM2's GPTQ peak: 2,122 MB with it, the bar 2,048); a failure in the second block still changes nothing."""
    import torchslim.graph.transaction as transaction_mod
    import torchslim.llm.gptq as gptq_mod

    events: list[str] = []
    real_snapshot, real_quantize = transaction_mod.snapshot, gptq_mod.gptq_quantize
    monkeypatch.setattr(transaction_mod, "snapshot", lambda m: events.append("snapshot") or real_snapshot(m))
    model = copy.deepcopy(base)
    model.train()  # flags must come back too
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def failing(*args, **kwargs):
        events.append("solve")
        if events.count("solve") == 8:  # the first linear of the second block
            raise RuntimeError("out of memory")
        return real_quantize(*args, **kwargs)
    monkeypatch.setattr(gptq_mod, "gptq_quantize", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        gptq_(model, W3, calibration=calib)
    assert "snapshot" not in events and model.training and all(m.training for m in model.modules())
    assert all(isinstance(m, nn.Linear) for n, m in model.named_modules() if n.endswith("proj"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    monkeypatch.setattr(gptq_mod, "gptq_quantize", real_quantize)
    events.clear()
    gptq_(model, W3, calibration=calib)
    assert events == ["snapshot"]  # once, after the plan


def test_calibration_is_checked_and_the_block_inputs_are_captured(base, calib):
    with pytest.raises(TransformRefusedError, match="needs calibration"):
        gptq_(copy.deepcopy(base), W3)
    with pytest.raises(TransformRefusedError, match="batch 0 must be token ids"):
        gptq_(copy.deepcopy(base), W3, calibration=[torch.randn(2, 8)])
    with pytest.raises(TransformRefusedError, match="no decoder blocks"):
        gptq_(nn.Sequential(nn.Linear(4, 4)), W3, calibration=calib)
    cache = capture_inputs(base, calibration_batches(calib, 8), decoder_blocks(base))
    assert cache.tokens == 512 and cache.hidden[0].shape == (8, 32, 64) and "position_embeddings" in cache.kwargs[0]
    with torch.no_grad():
        expected = base.model.layers[0](cache.hidden[1], **cache.kwargs[1])
        assert torch.allclose(cache.run(base.model.layers[0], 1), expected[0] if isinstance(expected, tuple) else expected)


def test_the_head_is_quantized_when_named_exactly(base, calib):
    model, report = run_on_copy(gptq_, base, {**W3, "targets": {"lm_head": {}}}, calib)
    assert isinstance(model.lm_head, QuantizedLinear) and [layer.name for layer in report.layers] == ["lm_head"]
    assert logits_error(base, model, calib) < logits_error(base, run_on_copy(rtn_, base, {**W3, "targets": {"lm_head": {}}}, calib)[0], calib)


def test_a_head_tied_to_the_embedding_is_not_pruned(calib):
    torch.manual_seed(0)
    tied = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1, vocab_size=256, tie_word_embeddings=True)).eval()
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    for verb, cfg in ((sparsegpt_, {}), (wanda_, {"score": "magnitude"})):
        with pytest.raises(TransformRefusedError, match=r"lm_head: its weight is shared with model\.embed_tokens\.weight"):
            verb(tied, {**cfg, "targets": {"lm_head": {}}}, calibration=calib)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight and not bool((tied.lm_head.weight == 0).any())


def test_the_stages_draw_calibration_tokens_from_the_data_set(base):
    class Text:
        def calibration_tokens(self, n: int, seq_len: int, seed: int) -> torch.Tensor:
            return torch.randint(256, (n, seq_len), generator=torch.Generator().manual_seed(seed))

    assert {"rtn", "gptq", "awq", "sparsegpt", "wanda"} <= set(STAGES.names())
    spec = STAGES.get("gptq")
    cfg = spec.config.parse({**W3, "calibration": {"sequences": 6, "seq_len": 16, "batch_size": 4}})
    ctx = StageContext(data=Text(), label="gptq", progress=False)  # type: ignore[arg-type]
    assert torch.equal(stage_tokens(cfg, ctx), stage_tokens(cfg, ctx))
    model = copy.deepcopy(base)
    result = run_stage(spec, model, cfg, ctx)
    assert result.report.meta["calibration"] == {"sequences": 6, "tokens": 96}
    assert isinstance(model.model.layers[1].mlp.down_proj, QuantizedLinear)
    with pytest.raises(ConfigError, match="sparsity"):
        STAGES.get("sparsegpt").config.parse({"granularity": "nm", "sparsity": 0.7})
