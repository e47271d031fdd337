"""Baselines shared by several benchmarks, trained from scratch once per machine.

``resnet20_fmnist()`` trains ResNet-20 on Fashion-MNIST with a fixed recipe and
caches the weights (safetensors) under ``$TORCHSLIM_CACHE/baselines`` keyed by
the recipe, so ``make bench`` trains it once and every benchmark that needs it
(structured pruning, quantization, distillation, low-rank) starts from the same
model. Delete the cache to retrain.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from torchslim.data import DataBundle, cache_dir, load_data
from torchslim.train import finetune
from torchslim.zoo import create_model

RESNET20_FMNIST: dict[str, Any] = {
    "epochs": 6,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "seed": 0,
}


def _key(name: str, cfg: dict[str, Any]) -> str:
    return name + "-" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def trained(
    name: str, build: Any, data: DataBundle, cfg: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[nn.Module, bool]:
    """Return ``(model, was_cached)``: ``build()`` trained on ``data`` with ``cfg`` (on ``device``), cached by name and config."""
    path = cache_dir() / "baselines" / f"{_key(name, cfg)}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.get("seed", 0))
    model = build().to(device)
    # one trainer at a time: a second benchmark asking for the same baseline waits, then loads it
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            model.load_state_dict(load_file(str(path), device=str(device)))
            return model, True
        finetune(model, data, cfg, description=f"baseline {name}")
        model.cpu()
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(path)
    return model.to(device), False


def resnet20_fmnist(data: DataBundle | None = None, device: torch.device | str = "cpu") -> tuple[nn.Module, DataBundle]:
    """ResNet-20 (1 input channel, 10 classes) trained on Fashion-MNIST with :data:`RESNET20_FMNIST`."""
    data = data or load_data("fashion-mnist")
    model, _ = trained(
        "resnet20_fmnist", lambda: create_model("resnet_cifar", depth=20, in_channels=1, num_classes=10), data, RESNET20_FMNIST, device
    )
    return model, data


def minilm_classifier(encoder: nn.Module, seed: int) -> nn.Module:
    """``BertForSequenceClassification`` with all-MiniLM-L6-v2's encoder weights and a fresh 2-way head seeded by ``seed``."""
    import copy

    from transformers import BertForSequenceClassification

    cfg = copy.deepcopy(encoder.config)
    cfg.num_labels = 2
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    missing, unexpected = model.bert.load_state_dict(encoder.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"MiniLM weights do not fit the classifier: missing {missing}, unexpected {unexpected}")
    return model
