"""The held-out models of ``heldout_probe``: 68 architectures the architecture matrix does not list.

Each factory returns an :class:`~torchslim.testing.architectures.Architecture` or a ``(model, example_input)``
pair, as ``python -m torchslim.testing.matrix --model module:factory`` takes them: tiny random Hugging Face models
of families the matrix leaves out, everyday PyTorch blocks (ShuffleNet, GhostNet, RepVGG, Res2Net, SPPF,
SqueezeNet, UNet, ConvNeXt, GroupNorm/PixelShuffle/einsum, MoE routing, a diffusers-style block, recurrent
cells, ``nn.Bilinear``) and situations a user brings (a ``torch.compile`` or ``DataParallel`` wrapper,
bfloat16, frozen parameters, channels-last, train mode, a layer called twice, ``forward(x, mask=None)``).
Written for the tenth session's probe of issue 20's acceptance 5; seeded, CPU, each builds in under a second
(``compiled`` compiles on its first call).
"""

# ruff: noqa: E701, E702, E731 - a catalog of small models, one line per layer where it fits

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.testing.architectures import ARCHITECTURES, Architecture, _hf, _seeded, _text, _vision

# -- heldout ---------------------------------------------------------------------------------------------

def _seed():
    torch.manual_seed(0)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(1e-1 * torch.ones(c))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(self.act(self.pw1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, stride=4)
        self.blocks = nn.Sequential(ConvNeXtBlock(32), ConvNeXtBlock(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def convnext():
    _seed()
    return ConvNeXt().eval(), torch.randn(4, 3, 32, 32)


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        e = self.enc(x)
        d = self.up(self.down(e))
        return self.out(self.dec(torch.cat([e, d], 1)))


def unet():
    _seed()
    m = UNet()
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 3, 16, 16))
    return m.eval(), torch.randn(4, 3, 16, 16)


class TorchTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)).mean(1))


def torch_transformer():
    _seed()
    return TorchTransformer().eval(), torch.randint(1, 100, (4, 12))


class Audio1D(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv1d(1, 16, 9, stride=2, padding=4), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
                               nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                               nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x):
        return self.f(x)


def audio1d():
    _seed()
    m = Audio1D()
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 1, 128))
    return m.eval(), torch.randn(4, 1, 128)


class Misc(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.n1 = nn.InstanceNorm2d(16, affine=True)
        self.a1 = nn.PReLU(16)
        self.c2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.a1(self.n1(self.c1(x)))
        z = F.interpolate(F.silu(self.c2(y)), scale_factor=2, mode="nearest")
        return self.fc(self.c3(torch.cat([y, z], 1)).flatten(2).amax(-1))


def misc():
    _seed()
    return Misc().eval(), torch.randn(4, 3, 16, 16)


class WNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 16, 3, padding=1))
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


def weightnorm():
    _seed()
    return WNNet().eval(), torch.randn(4, 3, 12, 12)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.cls = nn.Linear(16, 5)
        self.box = nn.Linear(16, 4)
        self.register_buffer("anchor", torch.linspace(0, 1, 4))

    def forward(self, x):
        h = self.body(x).mean((2, 3))
        return {"logits": self.cls(h), "boxes": self.box(h) + self.anchor}


def dictout():
    _seed()
    return DictOut().eval(), torch.randn(4, 3, 12, 12)


class BiLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.rnn = nn.LSTM(16, 24, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(48, 3)

    def forward(self, ids):
        h, _ = self.rnn(self.emb(ids))
        return self.fc(h.mean(1))


def bilstm():
    _seed()
    return BiLSTM().eval(), torch.randint(0, 50, (4, 9))


class Video3D(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.c(x).mean((2, 3, 4)))


def video3d():
    _seed()
    return Video3D().eval(), torch.randn(2, 3, 4, 8, 8)


# -- heldout2 --------------------------------------------------------------------------------------------

D = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
DROP = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

def roberta(): return _text(_hf("RobertaConfig", "RobertaForSequenceClassification", vocab_size=100, max_position_embeddings=40, pad_token_id=0, num_labels=2, **D, **DROP), low=2)
def distilbert(): return _text(_hf("DistilBertConfig", "DistilBertForSequenceClassification", vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=32, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0))
def albert(): return _text(_hf("AlbertConfig", "AlbertForSequenceClassification", vocab_size=100, embedding_size=16, max_position_embeddings=32, num_labels=2, classifier_dropout_prob=0.0, **D, **DROP))
def electra(): return _text(_hf("ElectraConfig", "ElectraForSequenceClassification", vocab_size=100, embedding_size=16, max_position_embeddings=32, num_labels=2, **D, **DROP))
def qwen2(): return _text(_hf("Qwen2Config", "Qwen2ForCausalLM", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32))
def mistral(): return _text(_hf("MistralConfig", "MistralForCausalLM", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, intermediate_size=64, max_position_embeddings=32, head_dim=8))
def phi3(): return _text(_hf("Phi3Config", "Phi3ForCausalLM", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32, pad_token_id=0))
def gpt_neox(): return _text(_hf("GPTNeoXConfig", "GPTNeoXForCausalLM", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=32))
def opt(): return _text(_hf("OPTConfig", "OPTForCausalLM", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, max_position_embeddings=32, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0, pad_token_id=0), low=2)
def gemma(): return _text(_hf("GemmaConfig", "GemmaForCausalLM", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, intermediate_size=64, head_dim=8, max_position_embeddings=32))
def t5enc(): return _text(_hf("T5Config", "T5EncoderModel", vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0))
def deit(): return _vision(_hf("DeiTConfig", "DeiTForImageClassification", image_size=16, patch_size=4, num_labels=10, **D, **DROP), (3, 16, 16))
def convnext_hf(): return _vision(_hf("ConvNextConfig", "ConvNextForImageClassification", num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10, image_size=32), (3, 32, 32))
def resnet_hf(): return _vision(_hf("ResNetConfig", "ResNetForImageClassification", num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck", num_labels=10), (3, 32, 32))
def swin(): return _vision(_hf("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0), (3, 32, 32))
def mobilevit(): return _vision(_hf("MobileViTConfig", "MobileViTForImageClassification", image_size=32, patch_size=2, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48], num_attention_heads=2, num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0), (3, 32, 32))
def regnet(): return _vision(_hf("RegNetConfig", "RegNetForImageClassification", num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, num_labels=10), (3, 32, 32))
def wav2vec2():
    m = _hf("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification", vocab_size=32, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=16, num_labels=3, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, **{k: v for k, v in D.items()})
    g = lambda s: torch.randn(2, 800, generator=torch.Generator().manual_seed(s))
    return Architecture(m.eval(), g(0), [g(s) for s in range(1, 5)], "audio")

class ShuffleBlock(nn.Module):
    def __init__(self, c=32, g=4):
        super().__init__()
        self.g = g
        self.pw1 = nn.Conv2d(c, c, 1, groups=g, bias=False); self.bn1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False); self.bn2 = nn.BatchNorm2d(c)
        self.pw2 = nn.Conv2d(c, c, 1, groups=g, bias=False); self.bn3 = nn.BatchNorm2d(c)
    def forward(self, x):
        y = F.relu(self.bn1(self.pw1(x)))
        n, c, h, w = y.shape
        y = y.view(n, self.g, c // self.g, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = self.bn3(self.pw2(self.bn2(self.dw(y))))
        return F.relu(x + y)
class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(ShuffleBlock(), ShuffleBlock())
        self.fc = nn.Linear(32, 10)
    def forward(self, x): return self.fc(self.blocks(self.stem(x)).mean((2, 3)))
def shufflenet(): return _vision(_seeded(ShuffleNet), (3, 16, 16))

class EffBlock(nn.Module):
    def __init__(self, c=16, e=4):
        super().__init__()
        h = c * e
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 5, padding=2, groups=h, bias=False), nn.BatchNorm2d(h), nn.SiLU())
        self.se1 = nn.Conv2d(h, 4, 1); self.se2 = nn.Conv2d(4, h, 1)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))
    def forward(self, x):
        y = self.dw(self.expand(x))
        s = torch.sigmoid(self.se2(F.silu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        return x + self.project(y * s)
class EffNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.blocks = nn.Sequential(EffBlock(), EffBlock())
        self.head = nn.Sequential(nn.Conv2d(16, 64, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.0), nn.Linear(64, 10))
    def forward(self, x): return self.head(self.blocks(self.stem(x)))
def effnet(): return _vision(_seeded(EffNet), (3, 16, 16))

class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.tf = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.out = nn.Linear(32, 50)
    def forward(self, src, tgt):
        mask = self.tf.generate_square_subsequent_mask(tgt.shape[1])
        return self.out(self.tf(self.emb(src), self.emb(tgt), tgt_mask=mask))
def seq2seq():
    g = lambda s: tuple(torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(s + k)) for k in (0, 100))
    return Architecture(_seeded(Seq2Seq).eval(), g(0), [g(s) for s in range(1, 5)], "text")

class GNNet(nn.Module):
    """GroupNorm, dilated conv, PixelShuffle upsampling, F.pad, einsum attention pooling."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=2, dilation=2); self.gn = nn.GroupNorm(4, 32)
        self.c2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.ps = nn.PixelShuffle(2)
        self.c3 = nn.Conv2d(16, 16, 3)
        self.q = nn.Linear(16, 16); self.fc = nn.Linear(16, 5)
    def forward(self, x):
        y = F.gelu(self.gn(self.c1(x)))
        y = self.ps(F.relu(self.c2(y)))
        y = self.c3(F.pad(y, (1, 1, 1, 1), mode="reflect"))
        t = y.flatten(2).transpose(1, 2)
        a = torch.einsum("bnd,bmd->bnm", self.q(t), t).softmax(-1)
        return self.fc(torch.einsum("bnm,bmd->bd", a, t) / t.shape[1])
def gnnet(): return _vision(_seeded(GNNet), (3, 16, 16))

class RNNCells(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.EmbeddingBag(60, 16, mode="mean")
        self.cell = nn.GRUCell(16, 24)
        self.rnn = nn.RNN(16, 24, batch_first=True, bidirectional=True)
        self.emb2 = nn.Embedding(60, 16, padding_idx=0)
        self.fc = nn.Linear(24 + 48, 3)
    def forward(self, ids):
        h = self.cell(self.emb(ids))
        o, _ = self.rnn(self.emb2(ids))
        return self.fc(torch.cat([h, o[:, -1]], 1))
def rnncells():
    g = lambda s: torch.randint(0, 60, (4, 7), generator=torch.Generator().manual_seed(s))
    return Architecture(_seeded(RNNCells).eval(), g(0), [g(s) for s in range(1, 5)], "text")


# -- heldout3 --------------------------------------------------------------------------------------------

def mixtral(): return _text(_hf("MixtralConfig", "MixtralForCausalLM", vocab_size=100, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32, **D))
def bloom(): return _text(_hf("BloomConfig", "BloomForCausalLM", vocab_size=100, hidden_size=32, n_layer=2, n_head=4, hidden_dropout=0.0, attention_dropout=0.0))
def falcon(): return _text(_hf("FalconConfig", "FalconForCausalLM", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0))
def gptj(): return _text(_hf("GPTJConfig", "GPTJForCausalLM", vocab_size=100, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
def deberta(): return _text(_hf("DebertaV2Config", "DebertaV2ForSequenceClassification", vocab_size=100, max_position_embeddings=32, num_labels=2, **D, **DROP))
def xlmr(): return _text(_hf("XLMRobertaConfig", "XLMRobertaForSequenceClassification", vocab_size=100, max_position_embeddings=40, pad_token_id=0, num_labels=2, **D, **DROP), low=2)
def mobilebert(): return _text(_hf("MobileBertConfig", "MobileBertForSequenceClassification", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, max_position_embeddings=32, num_labels=2, **DROP))
def clip_text(): return _text(_hf("CLIPTextConfig", "CLIPTextModel", vocab_size=100, max_position_embeddings=32, **D, dropout=0.0, attention_dropout=0.0))
def clip_vision(): return _vision(_hf("CLIPVisionConfig", "CLIPVisionModel", image_size=16, patch_size=4, **D, dropout=0.0, attention_dropout=0.0), (3, 16, 16))
def beit(): return _vision(_hf("BeitConfig", "BeitForImageClassification", image_size=16, patch_size=4, num_labels=10, use_relative_position_bias=True, **D, **DROP), (3, 16, 16))
def dinov2(): return _vision(_hf("Dinov2Config", "Dinov2ForImageClassification", image_size=16, patch_size=4, num_labels=10, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, **DROP), (3, 16, 16))
def segformer(): return _vision(_hf("SegformerConfig", "SegformerForImageClassification", num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0, drop_path_rate=0.0), (3, 32, 32))
def mbv2_hf(): return _vision(_hf("MobileNetV2Config", "MobileNetV2ForImageClassification", image_size=32, depth_multiplier=0.35, num_labels=10, classifier_dropout_prob=0.0), (3, 32, 32))

class LSTMProj(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(80, 16); self.lstm = nn.LSTM(16, 32, num_layers=2, proj_size=8, batch_first=True); self.fc = nn.Linear(8, 3)
    def forward(self, ids): return self.fc(self.lstm(self.emb(ids))[0][:, -1])
class TextCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(80, 16)
        self.convs = nn.ModuleList([nn.Conv1d(16, 12, k, padding=k // 2) for k in (3, 5)])
        self.fc = nn.Linear(24, 2)
    def forward(self, ids):
        x = self.emb(ids).transpose(1, 2)
        return self.fc(torch.cat([F.relu(c(x)).amax(-1) for c in self.convs], 1))
def _ids(m):
    g = lambda s: torch.randint(0, 80, (4, 9), generator=torch.Generator().manual_seed(s))
    return Architecture(_seeded(m).eval(), g(0), [g(s) for s in range(1, 5)], "text")
def lstm_proj(): return _ids(LSTMProj)
def textcnn(): return _ids(TextCNN)

class MoE(nn.Module):
    def __init__(self, d=16, e=4):
        super().__init__()
        self.gate = nn.Linear(d, e); self.experts = nn.ModuleList([nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, d)) for _ in range(e)])
        self.inp = nn.Linear(8, d); self.out = nn.Linear(d, 5)
    def forward(self, x):
        h = self.inp(x)
        w = self.gate(h).softmax(-1)
        top, idx = w.topk(2, -1)
        y = torch.zeros_like(h)
        for k, ex in enumerate(self.experts):
            sel = (idx == k).any(-1, keepdim=True).float() * (top * (idx == k)).sum(-1, keepdim=True)
            y = y + sel * ex(h)
        return self.out(h + y)
def moe(): return _vision(_seeded(MoE), (8,), "tabular")

class SDPAAttn(nn.Module):
    def __init__(self, d=32, heads=4):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(d, d, bias=False); self.to_k = nn.Linear(d, d, bias=False); self.to_v = nn.Linear(d, d, bias=False)
        self.to_out = nn.Sequential(nn.Linear(d, d), nn.Dropout(0.0))
    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (t(x).view(b, n, self.heads, -1).transpose(1, 2) for t in (self.to_q, self.to_k, self.to_v))
        o = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(o.transpose(1, 2).reshape(b, n, d))
class DiffBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(3, 32, 3, padding=1); self.norm = nn.GroupNorm(8, 32); self.attn = SDPAAttn(); self.ln = nn.LayerNorm(32)
        self.ff = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)); self.conv_out = nn.Conv2d(32, 3, 3, padding=1)
    def forward(self, x):
        h = F.silu(self.norm(self.conv_in(x)))
        b, c, hh, ww = h.shape
        t = h.flatten(2).transpose(1, 2)
        t = t + self.attn(self.ln(t)); t = t + self.ff(t)
        return self.conv_out(t.transpose(1, 2).reshape(b, c, hh, ww))
def diffblock(): return _vision(_seeded(DiffBlock), (3, 8, 8))

class SharedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1); self.body = nn.Conv2d(16, 16, 3, padding=1); self.bn = nn.BatchNorm2d(16)
        self.temp = nn.Parameter(torch.tensor(2.0)); self.fc = nn.Linear(16, 10)
    def forward(self, x, scale=None):
        h = F.relu(self.stem(x))
        h = F.relu(self.bn(self.body(h)))
        h = F.relu(self.body(h))  # the same conv, twice
        out = self.fc(h.mean((2, 3))) / self.temp
        return (out, h) if scale is None else out * scale
def shared_twice(): return _vision(_seeded(SharedTwice), (3, 16, 16))

class Bilin(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 12); self.b = nn.Linear(6, 12); self.bil = nn.Bilinear(12, 12, 8); self.out = nn.Linear(8, 3)
    def forward(self, x): return self.out(F.relu(self.bil(self.a(x), self.b(x))))
def bilinear(): return _vision(_seeded(Bilin), (6,), "tabular")


# -- heldout4 --------------------------------------------------------------------------------------------

def _resnet(): return ARCHITECTURES["resnet_cifar"]()
def compiled():
    a = _resnet(); return Architecture(torch.compile(a.model), a.example, a.calibration, a.kind)
def dataparallel():
    a = _resnet(); return Architecture(nn.DataParallel(a.model), a.example, a.calibration, a.kind)
def bf16():
    a = _resnet(); return Architecture(a.model.to(torch.bfloat16), a.example.to(torch.bfloat16), [c.to(torch.bfloat16) for c in a.calibration], a.kind)
def frozen_params():
    a = _resnet()
    for p in a.model.parameters(): p.requires_grad_(False)
    return a
def channels_last():
    a = _resnet(); m = a.model.to(memory_format=torch.channels_last)
    return Architecture(m, a.example.contiguous(memory_format=torch.channels_last), a.calibration, a.kind)
def train_mode():
    a = _resnet(); a.model.train(); return a

class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.b1 = nn.Conv2d(16, 8, 1)
        self.b2 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 5, padding=2))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(16, 6, 1))
        self.fc = nn.Linear(32, 10)
    def forward(self, x):
        h = self.stem(x)
        h = torch.cat([self.b1(h), self.b2(h), self.b3(h), self.b4(h)], 1)
        return self.fc(F.adaptive_avg_pool2d(F.relu(h), 1).flatten(1))
def inception(): return _vision(_seeded(Inception), (3, 16, 16))

class Ghost(nn.Module):
    """GhostNet: a primary conv, a cheap depthwise op, concat, sliced to the output width."""
    def __init__(self, inp=16, oup=24):
        super().__init__()
        self.oup = oup; init = 12
        self.primary = nn.Sequential(nn.Conv2d(inp, init, 1, bias=False), nn.BatchNorm2d(init), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, 1, 1, groups=init, bias=False), nn.BatchNorm2d(init), nn.ReLU())
    def forward(self, x):
        a = self.primary(x); b = self.cheap(a)
        return torch.cat([a, b], 1)[:, :self.oup]
class GhostNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1); self.g = Ghost(); self.fc = nn.Linear(24, 10)
    def forward(self, x): return self.fc(self.g(F.relu(self.stem(x))).mean((2, 3)))
def ghostnet(): return _vision(_seeded(GhostNet), (3, 16, 16))

class RepVGGBlock(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.k3 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.k1 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.id = nn.BatchNorm2d(c)
    def forward(self, x): return F.relu(self.k3(x) + self.k1(x) + self.id(x))
class RepVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1); self.blocks = nn.Sequential(RepVGGBlock(), RepVGGBlock()); self.fc = nn.Linear(16, 10)
    def forward(self, x): return self.fc(self.blocks(self.stem(x)).mean((2, 3)))
def repvgg(): return _vision(_seeded(RepVGG), (3, 16, 16))

class Res2(nn.Module):
    """Res2Net: split into 4 scales along the channels (a list of sizes), hierarchical adds, concat."""
    def __init__(self, c=32, s=4):
        super().__init__()
        self.w = c // s; self.convs = nn.ModuleList([nn.Conv2d(self.w, self.w, 3, padding=1) for _ in range(s - 1)])
        self.inp = nn.Conv2d(3, c, 1); self.out = nn.Conv2d(c, c, 1); self.fc = nn.Linear(c, 10)
    def forward(self, x):
        h = self.inp(x)
        xs = torch.split(h, self.w, 1)
        ys, prev = [xs[0]], None
        for i, conv in enumerate(self.convs):
            inp = xs[i + 1] if prev is None else xs[i + 1] + prev
            prev = F.relu(conv(inp)); ys.append(prev)
        return self.fc(F.relu(self.out(torch.cat(ys, 1))).mean((2, 3)))
def res2net(): return _vision(_seeded(Res2), (3, 16, 16))

class SPP(nn.Module):
    """YOLO-style SPPF: the same maxpool three times, concat of four, CSP split."""
    def __init__(self):
        super().__init__()
        self.cv1 = nn.Conv2d(3, 16, 1); self.m = nn.MaxPool2d(5, 1, 2); self.cv2 = nn.Conv2d(64, 32, 1)
        self.csp_a = nn.Conv2d(32, 16, 1); self.csp_b = nn.Conv2d(32, 16, 1); self.csp_out = nn.Conv2d(32, 32, 1)
        self.head = nn.Conv2d(32, 8, 1)
    def forward(self, x):
        x = F.silu(self.cv1(x)); y1 = self.m(x); y2 = self.m(y1)
        h = F.silu(self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1)))
        h = F.silu(self.csp_out(torch.cat([self.csp_a(h), self.csp_b(h)], 1)))
        return self.head(h)
def sppf(): return _vision(_seeded(SPP), (3, 16, 16))

class Fire(nn.Module):
    def __init__(self, i, s, e):
        super().__init__()
        self.sq = nn.Conv2d(i, s, 1); self.e1 = nn.Conv2d(s, e, 1); self.e3 = nn.Conv2d(s, e, 3, padding=1)
    def forward(self, x):
        x = F.relu(self.sq(x)); return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)
class Squeeze(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 8, 16), Fire(32, 8, 16))
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Conv2d(32, 10, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
    def forward(self, x): return torch.flatten(self.classifier(self.features(x)), 1)
def squeezenet(): return _vision(_seeded(Squeeze), (3, 32, 32))

def whisper():
    import transformers
    cfg = transformers.WhisperConfig(vocab_size=100, num_mel_bins=8, encoder_layers=1, decoder_layers=1, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16, max_target_positions=16, dropout=0.0, pad_token_id=0, decoder_start_token_id=1, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    m = transformers.WhisperForConditionalGeneration(cfg).eval()
    g = lambda s: {"input_features": torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(s)), "decoder_input_ids": torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(s))}
    return Architecture(m, g(0), [g(s) for s in range(1, 5)], "audio")
def bart():
    import transformers
    cfg = transformers.BartConfig(vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32, dropout=0.0, num_labels=3)
    torch.manual_seed(0)
    m = transformers.BartForSequenceClassification(cfg).eval()
    def g(s):
        ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(s)); ids[:, -1] = cfg.eos_token_id
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return Architecture(m, g(0), [g(s) for s in range(1, 5)], "text")
def t5_full():
    import transformers
    cfg = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, dropout_rate=0.0, decoder_start_token_id=0)
    torch.manual_seed(0)
    m = transformers.T5ForConditionalGeneration(cfg).eval()
    g = lambda s: {"input_ids": torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(s)), "decoder_input_ids": torch.randint(1, 100, (2, 4), generator=torch.Generator().manual_seed(s + 9))}
    return Architecture(m, g(0), [g(s) for s in range(1, 5)], "text")


# -- heldout5 --------------------------------------------------------------------------------------------

class MaskNet(nn.Module):
    def __init__(self):
        super().__init__(); self.a = nn.Linear(8, 16); self.b = nn.Linear(16, 4)
    def forward(self, x, mask=None):
        h = torch.relu(self.a(x))
        if mask is not None:
            h = h * mask
        return self.b(h)
def masknet():
    torch.manual_seed(0)
    return MaskNet().eval(), (torch.randn(4, 8), (torch.rand(4, 16) > 0.3).float())
class Conv(nn.Module):
    def __init__(self):
        super().__init__(); self.c = nn.Conv2d(3, 8, 3); self.f = nn.Linear(8, 2)
    def forward(self, x, scale: float = 1.0):
        return self.f(torch.relu(self.c(x)).mean((2, 3))) * scale
def conv_tuple1():
    torch.manual_seed(0)
    return Conv().eval(), (torch.randn(2, 3, 8, 8),)


#: every factory, by name (the order of the probe's table)
MODELS = {
    "convnext": convnext,
    "unet": unet,
    "torch_transformer": torch_transformer,
    "audio1d": audio1d,
    "misc": misc,
    "weightnorm": weightnorm,
    "dictout": dictout,
    "bilstm": bilstm,
    "video3d": video3d,
    "roberta": roberta,
    "distilbert": distilbert,
    "albert": albert,
    "electra": electra,
    "qwen2": qwen2,
    "mistral": mistral,
    "phi3": phi3,
    "gpt_neox": gpt_neox,
    "opt": opt,
    "gemma": gemma,
    "t5enc": t5enc,
    "deit": deit,
    "convnext_hf": convnext_hf,
    "resnet_hf": resnet_hf,
    "swin": swin,
    "mobilevit": mobilevit,
    "regnet": regnet,
    "wav2vec2": wav2vec2,
    "shufflenet": shufflenet,
    "effnet": effnet,
    "seq2seq": seq2seq,
    "gnnet": gnnet,
    "rnncells": rnncells,
    "mixtral": mixtral,
    "bloom": bloom,
    "falcon": falcon,
    "gptj": gptj,
    "deberta": deberta,
    "xlmr": xlmr,
    "mobilebert": mobilebert,
    "clip_text": clip_text,
    "clip_vision": clip_vision,
    "beit": beit,
    "dinov2": dinov2,
    "segformer": segformer,
    "mbv2_hf": mbv2_hf,
    "lstm_proj": lstm_proj,
    "textcnn": textcnn,
    "moe": moe,
    "diffblock": diffblock,
    "shared_twice": shared_twice,
    "bilinear": bilinear,
    "compiled": compiled,
    "dataparallel": dataparallel,
    "bf16": bf16,
    "frozen_params": frozen_params,
    "channels_last": channels_last,
    "train_mode": train_mode,
    "inception": inception,
    "ghostnet": ghostnet,
    "repvgg": repvgg,
    "res2net": res2net,
    "sppf": sppf,
    "squeezenet": squeezenet,
    "whisper": whisper,
    "bart": bart,
    "t5_full": t5_full,
    "masknet": masknet,
    "conv_tuple1": conv_tuple1,
}
