"""Attention kinds, PrunedMultiheadAttention, and the hook checks that guard the module-level rules."""

import copy

import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError, TransformRefusedError
from torchslim.graph.attention import attention_spec
from torchslim.graph.blocks import FFN, check_coupling, check_heads, ffn_blocks
from torchslim.graph.deps import dependency_groups
from torchslim.graph.mha import PrunedMultiheadAttention, to_pruned
from torchslim.graph.slicing import slice_attention
from torchslim.prune.structured import prune_structured_


@pytest.mark.parametrize("batch_first", [True, False])
def test_pruned_multihead_attention_computes_what_torch_computes(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    ours = to_pruned(copy.deepcopy(mha))
    assert isinstance(ours, PrunedMultiheadAttention) and not ours._qkv_same_embed_dim
    q = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    kv = torch.randn(2, 7, 16) if batch_first else torch.randn(7, 2, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"attn_mask": causal.float() * -1e4, "key_padding_mask": pad.float() * -1e4},
                   {"need_weights": False, "key_padding_mask": pad}, {"average_attn_weights": False}):
        with torch.no_grad():
            a, wa = mha(q, kv, kv, **kwargs)
            b, wb = ours(q, kv, kv, **kwargs)
        assert torch.allclose(a, b, atol=1e-5)
        assert (wa is None) == (wb is None) and (wa is None or torch.allclose(wa, wb, atol=1e-6))
    with torch.no_grad():  # unbatched input
        assert torch.allclose(mha(q[0] if batch_first else q[:, 0], kv[0] if batch_first else kv[:, 0], kv[0] if batch_first else kv[:, 0])[0],
                              ours(q[0] if batch_first else q[:, 0], kv[0] if batch_first else kv[:, 0], kv[0] if batch_first else kv[:, 0])[0], atol=1e-5)


def test_removing_a_head_is_zeroing_its_output_columns():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ref = copy.deepcopy(mha)
    slice_attention(mha, "attn", [1, 2])
    with torch.no_grad():
        ref.out_proj.weight[:, [*range(0, 4), *range(12, 16)]] = 0.0
        x = torch.randn(2, 5, 16)
        assert torch.allclose(mha(x, x, x)[0], ref(x, x, x)[0], atol=1e-6)
    assert (mha.num_heads, mha.head_dim, mha.embed_dim, tuple(mha.in_proj_bias.shape)) == (2, 4, 16, (24,))
    with pytest.raises(TorchslimError, match="cannot remove every head"):
        slice_attention(mha, "attn", [])


class GQA(nn.Module):
    """A Llama-style attention (4 query heads over 2 key/value heads) whose forward may scramble the heads."""

    def __init__(self, scramble: bool = False) -> None:
        super().__init__()
        self.head_dim, self.num_key_value_groups, self.scramble = 2, 2, scramble
        self.q_proj, self.o_proj = nn.Linear(8, 8), nn.Linear(8, 8)
        self.k_proj, self.v_proj = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        b, n, _ = x.shape
        d = self.head_dim
        q = self.q_proj(x).view(b, n, -1, d).transpose(1, 2)
        k = self.k_proj(x).view(b, n, -1, d).transpose(1, 2).repeat_interleave(self.num_key_value_groups, 1)
        v = self.v_proj(x).view(b, n, -1, d).transpose(1, 2).repeat_interleave(self.num_key_value_groups, 1)
        out = torch.softmax(q @ k.transpose(-1, -2), -1) @ v  # (b, heads, n, d)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.o_proj(out.roll(2, -1) if self.scramble else out)


class Net(nn.Module):
    def __init__(self, scramble: bool = False) -> None:
        super().__init__()
        self.attn, self.head = GQA(scramble), nn.Linear(8, 2)

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent: torch.fx cannot trace this model
            x = -x
        return self.head(self.attn(x).mean(1))


def test_grouped_query_heads_go_with_their_group_and_the_hook_check_catches_a_scrambled_layout():
    spec = attention_spec(GQA(), "attn")
    assert (spec.kind, spec.units()) == ("hf", [[0, 1], [2, 3]])
    x = torch.randn(1, 3, 8)
    assert check_heads(Net(), x, attention_spec(Net().attn, "attn")) is None
    torch.manual_seed(0)
    net = Net()
    r = prune_structured_(net, {"granularity": "head", "sparsity": 0.5}, example_input=x)
    assert list(r.meta["structure_step"]["heads"]["attn"]) in ([0, 1], [2, 3]) and net.attn.k_proj.out_features == 2
    with pytest.raises(TorchslimError, match="groups of different sizes"):
        slice_attention(GQA(), "attn", [0, 2, 3])
    bad = Net(scramble=True)
    before = {k: v.clone() for k, v in bad.state_dict().items()}
    r = prune_structured_(bad, {"granularity": "head", "sparsity": 0.5, "targets": {"re:.*": {}}}, example_input=x)
    assert r.meta["structure_step"]["heads"] == {} and "are not where its kind says" in r.skipped[0].reason
    with pytest.raises(TransformRefusedError, match=r"layer attn cannot be pruned by heads: the heads of attn \(GQA\) are not where"):
        prune_structured_(bad, {"granularity": "head", "sparsity": 0.5, "targets": {"attn": {}}}, example_input=x)
    assert all(torch.equal(before[k], v) for k, v in bad.state_dict().items())


class Untraceable(nn.Module):
    """An MLP block behind data-dependent control flow; ``permute`` feeds fc2 the hidden channels reversed."""

    def __init__(self, permute: bool = False) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(4, 8), nn.Linear(8, 2)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.permute = permute

    def forward(self, x):
        h = self.inp(x)
        if h.sum() > 1e9:
            h = -h
        z = torch.relu(self.mlp.fc1(h))
        return self.out(h + self.mlp.fc2(z.flip(-1) if self.permute else z))


def test_module_rules_prune_a_checked_block_and_freeze_one_that_fails_its_check():
    x = torch.randn(2, 4)
    deps = dependency_groups(Untraceable(), x)
    assert deps.engine == "rules" and "torch.fx cannot trace Untraceable" in deps.note
    hidden = next(g for g in deps.groups if "mlp.fc1" in g.producers)
    assert hidden.prunable and hidden.channels == 16
    assert "not in a block the module-level rules know" in next(g for g in deps.groups if "inp" in g.producers).frozen
    m = Untraceable(permute=True).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert "expected" in check_coupling(m, x, FFN("mlp", ["mlp.fc1"], "mlp.fc2", 16))
    assert m.training and not m.mlp.fc1._forward_hooks and not m.mlp.fc2._forward_pre_hooks  # hooks gone, mode back
    with pytest.raises(TransformRefusedError, match=r"layer mlp.fc1 cannot be pruned structurally: feed-forward block mlp failed its check"):
        prune_structured_(m, {"sparsity": 0.5, "targets": {"mlp.fc1": {}}}, example_input=x)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_feed_forward_patterns_and_sequential_runs():
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    assert [(b.ups, b.down, b.width) for b in ffn_blocks(seq)] == [(["0"], "3", 8)]  # a LayerNorm breaks a run
    layer = nn.TransformerDecoderLayer(8, 2, 16, batch_first=True)
    assert [(b.ups, b.down) for b in ffn_blocks(layer)] == [(["linear1"], "linear2")]
