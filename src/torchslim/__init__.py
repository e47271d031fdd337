"""torchslim: make trained PyTorch models smaller and faster, and prove it.

Example:
    Train, prune 90 % of the weights, fine-tune and measure. ``"digits"`` is
    scikit-learn's small 8×8 set (seconds); ``"mnist"`` works the same way with
    the default ``lenet300`` (784 inputs).

    >>> import torchslim as ts
    >>> _ = torch.manual_seed(0)
    >>> data = ts.load_data("digits")
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> _ = ts.finetune(model, data, {"epochs": 5, "lr": 0.1})
    >>> report = ts.prune_(model, {"sparsity": 0.9, "keep_first_last": False})
    >>> _ = ts.finetune(model, data, {"epochs": 2, "lr": 0.01})
    >>> m = ts.evaluate(model, data.loader("test"), example_input=data.example_input())
    >>> m.params, m.nonzeros
    (50610, 5430)
    >>> m.accuracy > 0.8
    True
"""

import importlib
from typing import Any

from torchslim.data import load_data
from torchslim.distill import DistillConfig, distill_from
from torchslim.encode import ShareConfig, TslimFormatError, load, save, share_weights_
from torchslim.errors import CheckpointError, ConfigError, DataNotFoundError, TorchslimError, TransformRefusedError
from torchslim.fold import DropLayersConfig, FoldConfig, drop_layers_, fold_
from torchslim.lowrank import FactorizeConfig, factorize_
from torchslim.measure import Measurement, evaluate
from torchslim.pipeline import run_recipe
from torchslim.prune import PruneConfig, StructuredPruneConfig, load_sparse, prune_, save_sparse
from torchslim.prune.regularize import SparseTrainConfig, sparse_train
from torchslim.prune.schedule import ScheduledPruneConfig, prune_with_schedule
from torchslim.quant import QuantizeConfig, quantize_
from torchslim.quant.mixed import MixedPrecisionConfig, mixed_precision_
from torchslim.recipe import load_recipe
from torchslim.report import Report
from torchslim.search import SensitivityConfig, SensitivityResult, sensitivity
from torchslim.train import TrainConfig, finetune, load_checkpoint, load_weights, save_checkpoint
from torchslim.zoo import create_model

__version__ = "0.1.0"

#: public names served from a module that loads ONNX and ONNX Runtime, imported on first use (``import torchslim`` stays light)
_DEPLOY = {"export": "torchslim.deploy.api", "save_pretrained": "torchslim.deploy.hf"}


def __getattr__(name: str) -> Any:
    """``ts.export`` and ``ts.save_pretrained`` (:mod:`torchslim.deploy.api`, :mod:`torchslim.deploy.hf`), loaded when first used."""
    if name in _DEPLOY:
        value = getattr(importlib.import_module(_DEPLOY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torchslim' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataNotFoundError",
    "DistillConfig",
    "DropLayersConfig",
    "FactorizeConfig",
    "FoldConfig",
    "Measurement",
    "MixedPrecisionConfig",
    "PruneConfig",
    "QuantizeConfig",
    "Report",
    "ScheduledPruneConfig",
    "SensitivityConfig",
    "SensitivityResult",
    "ShareConfig",
    "SparseTrainConfig",
    "StructuredPruneConfig",
    "TorchslimError",
    "TrainConfig",
    "TransformRefusedError",
    "TslimFormatError",
    "create_model",
    "distill_from",
    "drop_layers_",
    "factorize_",
    "finetune",
    "fold_",
    "load",
    "load_checkpoint",
    "load_data",
    "load_recipe",
    "load_sparse",
    "load_weights",
    "mixed_precision_",
    "evaluate",
    "export",
    "prune_",
    "prune_with_schedule",
    "quantize_",
    "run_recipe",
    "save",
    "save_checkpoint",
    "save_pretrained",
    "sensitivity",
    "save_sparse",
    "share_weights_",
    "sparse_train",
]
