import torch
from torch import nn

from torchslim.graph.deps import dependency_groups
from torchslim.zoo import create_model


def members(g):
    return sorted((m.module, m.role) for m in g.members)


def test_resnet_residual_stream_is_one_group_and_output_is_frozen():
    d = dependency_groups(create_model("resnet_cifar", depth=20, in_channels=1), torch.randn(1, 1, 28, 28))
    stage2 = [g for g in d.groups if ("layer2.0.conv2", "out") in members(g)][0]
    outs = {m for m, r in members(stage2) if r == "out"}
    assert outs == {"layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2", "layer2.0.shortcut.0"}
    assert stage2.prunable and stage2.channels == 32
    fc = [g for g in d.groups if ("fc", "out") in members(g)][0]
    assert fc.frozen == "reaches the model output"


def test_flatten_to_linear_and_concat_offsets():
    d = dependency_groups(create_model("lenet5"), torch.randn(1, 1, 28, 28))
    g = [g for g in d.groups if ("conv2", "out") in members(g)][0]
    fc1 = [m for m in g.members if m.module == "fc1"][0]
    assert fc1.role == "in" and fc1.inner == 16  # 50 channels x 4x4

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
            self.c = nn.Conv2d(10, 5, 1)
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(self.c(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))

    d = dependency_groups(Cat(), torch.randn(1, 3, 4, 4))
    ga = [g for g in d.groups if ("a", "out") in members(g)][0]
    gb = [g for g in d.groups if ("b", "out") in members(g)][0]
    assert [m.offset for m in ga.members if m.module == "c"] == [0]
    assert [m.offset for m in gb.members if m.module == "c"] == [4]


def test_unknown_ops_freeze_instead_of_guessing():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.roll(h, 1, dims=-1))

    d = dependency_groups(Odd(), torch.randn(1, 4))
    g = [g for g in d.groups if ("a", "out") in members(g)][0]
    assert not g.prunable and "roll" in g.frozen
