import pytest
import torch

from torchslim.data import load_data
from torchslim.train import finetune
from torchslim.zoo import create_model


@pytest.fixture(scope="session")
def digits():
    return load_data("digits")


@pytest.fixture(scope="session")
def trained_digits_state(digits):
    """LeNet-300-100 (64 inputs) trained on digits: ~97 % test accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("lenet300", in_features=64)
    finetune(model, digits, {"epochs": 15, "lr": 0.05, "batch_size": 32}, progress=False)
    torch.set_num_threads(threads)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture()
def trained_lenet(trained_digits_state):
    def make():
        m = create_model("lenet300", in_features=64)
        m.load_state_dict(trained_digits_state)
        return m

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster and immune to a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
