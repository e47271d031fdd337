"""Models the .tslim tests share."""

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.encode.kmeans import share_weights_


@pytest.fixture
def compressed_lenet300():
    """A builder of a pruned and weight-shared LeNet-300-100 (seeded), in eval mode."""

    def build(sparsity: float = 0.9, bits: int = 5) -> nn.Module:
        torch.manual_seed(0)
        model = ts.create_model("lenet300")
        ts.prune_(model, {"sparsity": sparsity, "keep_first_last": False})
        share_weights_(model, {"bits": bits})
        return model.eval()

    return build


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """The two models' state dicts are equal bit for bit (same keys, dtypes, shapes, bit patterns)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        x, y = sa[k].contiguous(), sb[k].contiguous()
        if x.is_floating_point():
            bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
            x, y = x.view(bits), y.view(bits)
        assert torch.equal(x, y), k


@pytest.fixture
def same_state():
    """:func:`assert_same_state`."""
    return assert_same_state
