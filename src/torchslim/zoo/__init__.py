"""Model zoo: architectures registered by name.

Example:
    >>> from torchslim.zoo import create_model
    >>> model = create_model("resnet_cifar", depth=20, in_channels=1, num_classes=10)
"""

from torchslim.zoo.registry import MODELS, create_model
from torchslim.zoo import lenet as _lenet  # noqa: F401  (registers lenet300, lenet5)
from torchslim.zoo import resnet as _resnet  # noqa: F401  (registers resnet_cifar)

__all__ = ["MODELS", "create_model"]
