"""Model zoo: architectures registered by name.

Example:
    >>> from torchslim.zoo import create_model
    >>> model = create_model("resnet_cifar", depth=20, in_channels=1, num_classes=10)
"""

from torchslim.zoo import densenet as _densenet  # noqa: F401  (registers densenet_small)
from torchslim.zoo import lenet as _lenet  # noqa: F401  (registers lenet300, lenet5)
from torchslim.zoo import minilm as _minilm  # noqa: F401  (registers minilm)
from torchslim.zoo import mlp as _mlp  # noqa: F401  (registers mlp)
from torchslim.zoo import mobilenet as _mobilenet  # noqa: F401  (registers mobilenet_v2)
from torchslim.zoo import resnet as _resnet  # noqa: F401  (registers resnet_cifar)
from torchslim.zoo import transformer as _transformer  # noqa: F401  (registers transformer_encoder)
from torchslim.zoo.registry import MODELS, create_model

__all__ = ["MODELS", "create_model"]
