import pytest
import torch

from torchslim.distill import find_layer_stack, keep_layers, thinner
from torchslim.errors import TorchslimError
from torchslim.measure import count_macs


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, max_position_embeddings=32)
    return BertModel(cfg).eval()


def test_keep_layers_copies_the_chosen_teacher_layers(tiny_bert):
    assert find_layer_stack(tiny_bert) == "encoder.layer"
    student = keep_layers(tiny_bert, "every_other")
    assert len(student.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    assert len(tiny_bert.encoder.layer) == 4 and tiny_bert.config.num_hidden_layers == 4  # teacher untouched
    for s_i, t_i in ((0, 0), (1, 2)):
        for (n, a), (_, b) in zip(student.encoder.layer[s_i].state_dict().items(), tiny_bert.encoder.layer[t_i].state_dict().items()):
            assert torch.equal(a, b), n
        assert student.encoder.layer[s_i] is not tiny_bert.encoder.layer[t_i]
    ids = torch.randint(1, 100, (2, 10))
    out = student(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    # equal to running the teacher's embeddings then teacher layers 0 and 2 by hand
    h = tiny_bert.embeddings(input_ids=ids)
    for i in (0, 2):
        h = tiny_bert.encoder.layer[i](h)[0] if isinstance(tiny_bert.encoder.layer[i](h), tuple) else tiny_bert.encoder.layer[i](h)
    assert torch.allclose(out, h, atol=1e-5)


def test_keep_layers_rejects_bad_indices(tiny_bert):
    for keep in ([], [0, 0], [4], [-1]):
        with pytest.raises(TorchslimError, match="distinct layer indices"):
            keep_layers(tiny_bert, keep)
    with pytest.raises(TorchslimError, match="no layer stack"):
        keep_layers(torch.nn.Linear(3, 3), [0])


def test_thinner_resnet_halves_macs_near_factor_0_7():
    x = torch.zeros(1, 1, 28, 28)
    from torchslim.zoo import create_model

    full = count_macs(create_model("resnet_cifar", depth=20, in_channels=1), x)
    thin = thinner("resnet_cifar", 0.7, depth=20, in_channels=1)
    assert thin.conv1.out_channels == 11
    assert 0.4 < count_macs(thin, x) / full < 0.6
    assert thinner("mlp", 0.5, hidden=[1200, 1200]).fc2.weight.shape == (600, 600)
    with pytest.raises(TorchslimError, match="no width argument"):
        thinner("lenet5", 0.5)
