"""kd_recovery: does distillation from the unpruned ResNet-20 heal a 2×-cheaper student better than plain training?

Structured pruning is not in torchslim yet, so the "pruned" model is stood in
for by a thinner ResNet-20 (``resnet_cifar`` ``width`` chosen here so that
``torchslim.measure.count_macs`` gives ≈ 2× fewer MACs than width 16). The
same student (same initial weights) is trained from scratch with plain
cross-entropy, and distilled from the trained width-16 ResNet-20 (soft targets
T=4, alpha=0.5), for the same epochs on the same Fashion-MNIST images.

Budget (shared 2-core CPU, ~20 minutes): the teacher and both students train on
a fixed seeded subset of the Fashion-MNIST training split (``KD_RECOVERY_TRAIN``
images, default 8,000); accuracy is on the full 10,000-image test split.

Target: distilled accuracy >= plain-training accuracy.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/kd_recovery.py``
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, write_result  # noqa: E402

import torchslim as ts  # noqa: E402
from torchslim.data import DataBundle, Split  # noqa: E402
from torchslim.measure import count_macs, count_params, evaluate_accuracy  # noqa: E402

N_TRAIN = int(os.environ.get("KD_RECOVERY_TRAIN", 8000))
TEACHER_EPOCHS = int(os.environ.get("KD_RECOVERY_TEACHER_EPOCHS", 4))
STUDENT_EPOCHS = int(os.environ.get("KD_RECOVERY_STUDENT_EPOCHS", 4))
TEMPERATURE, ALPHA = 4.0, 0.5
TRAIN = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine", "batch_size": 128, "seed": 0}


def resnet(width: int) -> torch.nn.Module:
    return ts.create_model("resnet_cifar", depth=20, in_channels=1, num_classes=10, width=width)


def _cached_baseline() -> tuple[torch.nn.Module | None, str]:
    """The shared ResNet-20 Fashion-MNIST baseline of ``benchmarks/_baselines.py`` when it is already cached (never trains it)."""
    try:
        import _baselines
        from safetensors.torch import load_file

        from torchslim.data import cache_dir
    except ImportError:
        return None, ""
    path = cache_dir() / "baselines" / f"{_baselines._key('resnet20_fmnist', _baselines.RESNET20_FMNIST)}.safetensors"
    if not path.exists():
        return None, ""
    model = resnet(16)
    model.load_state_dict(load_file(str(path)))
    return model, f"shared baseline benchmarks/_baselines.resnet20_fmnist ({_baselines.RESNET20_FMNIST['epochs']} epochs, full training split)"


def main() -> None:
    timer = Timer()
    torch.set_num_threads(int(os.environ.get("KD_THREADS", 1)))  # training only; 1 thread wastes least on a shared machine
    full = ts.load_data("fashion-mnist", val_size=2000)
    idx = torch.randperm(len(full.train), generator=torch.Generator().manual_seed(0))[:N_TRAIN].sort().values
    data = DataBundle(full.name, Split(full.train.x[idx], full.train.y[idx]), full.val, full.test, full.num_classes, full.input_shape, full.normalize)
    x = data.example_input()

    teacher_macs = count_macs(resnet(16), x)
    width = min(range(6, 16), key=lambda w: abs(count_macs(resnet(w), x) / teacher_macs - 0.5))
    student_macs = count_macs(resnet(width), x)

    teacher, teacher_source = _cached_baseline()
    if teacher is None:
        torch.manual_seed(0)
        teacher = resnet(16)
        ts.finetune(teacher, data, {**TRAIN, "epochs": TEACHER_EPOCHS}, progress=False, description="teacher (unpruned)")
        teacher_source = f"trained here: {TEACHER_EPOCHS} epochs on the {N_TRAIN}-image subset"
    teacher_acc = evaluate_accuracy(teacher, data.loader("test", 1000))

    torch.manual_seed(1)
    plain = resnet(width)
    healed = resnet(width)
    healed.load_state_dict(plain.state_dict())
    ts.finetune(plain, data, {**TRAIN, "epochs": STUDENT_EPOCHS}, progress=False, description="student plain")
    plain_acc = evaluate_accuracy(plain, data.loader("test", 1000))
    ts.distill(healed, teacher, data, {**TRAIN, "epochs": STUDENT_EPOCHS, "temperature": TEMPERATURE, "alpha": ALPHA},
               progress=False, description="student distilled")
    kd_acc = evaluate_accuracy(healed, data.loader("test", 1000))

    metrics = {
        "teacher_test_accuracy": teacher_acc,
        "student_plain_test_accuracy": plain_acc,
        "student_distilled_test_accuracy": kd_acc,
        "kd_minus_plain_pt": 100 * (kd_acc - plain_acc),
        "teacher_macs": teacher_macs,
        "student_macs": student_macs,
        "macs_ratio": teacher_macs / student_macs,
        "student_width": width,
        "teacher_params": count_params(teacher),
        "student_params": count_params(plain),
        "train_images": N_TRAIN,
        "teacher_source": teacher_source,
        "student_epochs": STUDENT_EPOCHS,
        "temperature": TEMPERATURE,
        "alpha": ALPHA,
    }
    path = write_result(
        "kd_recovery",
        metrics=metrics,
        baseline={"teacher_test_accuracy": teacher_acc},
        targets={"kd_ge_plain": {"value": kd_acc, "bar": f">= {plain_acc:.4f} (plain training)", "met": kd_acc >= plain_acc}},
        wall_s=timer.seconds,
        notes=(
            "Stand-in for structured pruning (not landed yet): a thinner ResNet-20 "
            f"(width {width}, {teacher_macs / student_macs:.2f}x fewer MACs by torchslim.measure.count_macs) trained from scratch vs "
            f"distilled from the trained width-16 ResNet-20 ({teacher_source}), same init, {STUDENT_EPOCHS} epochs each, SGD Nesterov lr 0.1 cosine, wd 5e-4. "
            f"Fashion-MNIST, {N_TRAIN} seeded training images (CPU budget), 2,000 validation, full 10,000 test. "
            "Rerun with a structurally pruned student once prune_ supports it."
        ),
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
