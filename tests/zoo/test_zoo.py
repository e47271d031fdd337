import pytest
import torch

from torchslim.errors import TorchslimError, UnknownNameError
from torchslim.zoo import create_model


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_lenet_parameter_counts_match_the_papers():
    assert n_params(create_model("lenet300")) == 266_610  # 784*300+300 + 300*100+100 + 100*10+10
    assert n_params(create_model("lenet5")) == 431_080  # Caffe LeNet-5 (Han et al. table 2)


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_resnet_cifar_depths(depth):
    m = create_model("resnet_cifar", depth=depth, in_channels=1, num_classes=7)
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 6n+1 3x3 convs + the classifier
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_unknown_names_and_arguments():
    with pytest.raises(UnknownNameError, match="registered: .*lenet300, lenet5, .*resnet_cifar"):
        create_model("vgg16")
    with pytest.raises(TorchslimError, match="allowed: depth, in_channels"):
        create_model("resnet_cifar", layers=3)
    with pytest.raises(TorchslimError, match="6n\\+2"):
        create_model("resnet_cifar", depth=21)


def test_lenet300_accepts_images_and_vectors():
    m = create_model("lenet300")
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(m(x), m(x.flatten(1)))
