import torch

from torchslim.data import DataBundle, Jitter, load_data


def test_jitter_shifts_each_image_by_at_most_two_pixels():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 10:18, 12:16] = torch.rand(64, 8, 4) + 1.0  # an object well inside the frame
    out = Jitter(2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    shifts = set()
    for i in range(64):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out[i], torch.roll(x[i], shifts=(dy, dx), dims=(1, 2)))
        ]
        assert found, f"image {i} is not a shift of its input"
        shifts.add(found[0])
    assert len(shifts) > 10  # shifts really vary over the 25 possibilities


def test_jitter_is_seeded_and_applies_to_shuffled_train_loaders_only():
    d = load_data("digits")
    bundle = DataBundle(d.name, d.train, d.val, d.test, 10, d.input_shape, d.normalize, train_transform=Jitter(1))
    a = next(iter(bundle.loader("train", 32, shuffle=True, seed=3)))[0]
    b = next(iter(bundle.loader("train", 32, shuffle=True, seed=3)))[0]
    assert torch.equal(a, b)
    order = torch.randperm(len(d.train), generator=torch.Generator().manual_seed(3 * 1_000_003))[:32]
    assert not torch.equal(a, d.train.x[order])  # augmented
    clean = next(iter(bundle.loader("train", 32)))[0]
    assert torch.equal(clean, d.train.x[:32])  # evaluation / calibration loaders see clean data
    assert torch.equal(next(iter(bundle.loader("test", 16)))[0], d.test.x[:16])
    assert Jitter(0)(d.test.x[:4], None) is not None and torch.equal(Jitter(0)(d.test.x[:4], None), d.test.x[:4])


def test_training_with_jitter_still_learns_digits():
    import torchslim as ts

    d = load_data("digits")
    d.train_transform = Jitter(1)
    torch.manual_seed(0)
    m = ts.create_model("mlp", in_features=64, hidden=[128])
    ts.finetune(m, d, {"epochs": 10, "lr": 0.05, "batch_size": 32, "schedule": "cosine"}, progress=False)
    assert ts.evaluate(m, d.loader("test"), example_input=d.example_input(), with_latency=False, with_memory=False).accuracy > 0.88  # 1 px on 8x8 is a big shift
