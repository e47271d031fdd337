"""quant_mobilenet: static int8 of the zoo's ImageNet MobileNetV2 in ONNX Runtime, against float and quantize_static.

Inputs: Fashion-MNIST test images (``ts.load_data("fashion-mnist")``, back to [0, 1]),
resized to 224×224 (bilinear), replicated to 3 channels and ImageNet-normalised;
calibration on training images of the same kind (``CALIB_BATCHES`` batches of
``CALIB_SIZE``; the accuracy guard holds back a quarter of them).

Figures:

* ours, ``quantize_(model, {"mode": "static"})`` with the defaults (ReLU6 outputs
  quantized after the clamp, bias correction, the accuracy guard warning), exported
  with ``export_qdq``: top-1 agreement and output SQNR against the float model in
  ONNX Runtime on ``TEST`` images, and agreement with our own simulation;
* ours with ``guard.fallback: auto`` (layers the guard measures most sensitive kept
  in float, at most ``MAX_FLOAT``), the same figures;
* ONNX Runtime's ``quantize_static`` (QDQ, per-channel int8 weights, uint8
  activations, MinMax) on the same calibration batches;
* the floor no int8 model reaches on these images: the float model with only its input rounded to the int8
  model's input grid (what its first int8 convolution reads), and to the 8-bit pixel grid;
* latency at batch 8, 2 threads, medians of interleaved rounds: ONNX Runtime fp32,
  our int8, our int8 with the fallback, quantize_static;
* which layer groups run faster in float (``choose_float_layers``: whole-graph A/B in
  ONNX Runtime) for MobileNetV2, and ONNX Runtime int8 against fp32 for every zoo model
  (static int8 with the defaults, random calibration inputs of the model's shape).
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import Timer, interleaved, write_result
from quant_matrix_speed import one_model

from torchslim.data import load_data
from torchslim.deploy import OrtModel, choose_float_layers, export_fp32, export_qdq, measure_ort_latency
from torchslim.quant import quantize_
from torchslim.quant.affine import sqnr_db
from torchslim.zoo import create_model
from torchslim.zoo.mobilenet import IMAGENET_MEAN, IMAGENET_STD

SEED = 0
THREADS, BATCH, RUNS, WARMUP, ROUNDS = 2, 8, 20, 3, 5
CALIB_BATCHES, CALIB_SIZE, TEST, MAX_FLOAT = 8, 32, 512, 12
FMNIST_MEAN, FMNIST_STD = 0.286, 0.353  # torchslim's Fashion-MNIST normalisation, undone to get [0, 1] pixels


def imagenet_view(x: torch.Tensor) -> torch.Tensor:
    """Fashion-MNIST tensors (normalised, 1×28×28) as ImageNet-normalised 3×224×224 images."""
    pixels = (x * FMNIST_STD + FMNIST_MEAN).clamp(0, 1)
    big = F.interpolate(pixels, size=224, mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (big - mean) / std


def data() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    fm = load_data("fashion-mnist")
    g = torch.Generator().manual_seed(SEED)
    idx = torch.randperm(fm.train.x.shape[0], generator=g)[: CALIB_BATCHES * CALIB_SIZE]
    calib = [imagenet_view(fm.train.x[idx[i : i + CALIB_SIZE]]) for i in range(0, len(idx), CALIB_SIZE)]
    test = [imagenet_view(fm.test.x[i : i + 64]) for i in range(0, TEST, 64)]
    return calib, test


def input_floor(base: torch.nn.Module, test: list[torch.Tensor], ref: torch.Tensor, qmodel: torch.nn.Module) -> dict[str, Any]:
    """The float model against itself with only its input rounded: to the int8 model's input grid (the first int8
    convolution reads its input on it), and to the 8-bit pixel grid (the image stored as an ordinary 8-bit image).

    What no int8 model of this float model can beat on these images: its first layer's input is on such a grid.
    """
    fq = dict(qmodel.named_modules())["quant_act.input_0"]
    qp = fq.qparams()
    scale, zero = float(qp.scale), int(qp.zero_point)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def int8_grid(x: torch.Tensor) -> torch.Tensor:
        return ((x / scale).round() + zero).clamp(qp.qmin, qp.qmax).sub(zero) * scale

    def pixel_grid(x: torch.Tensor) -> torch.Tensor:
        return (((x * std + mean) * 255).round().clamp(0, 255) / 255 - mean) / std

    return {"input_scale": scale, "input_zero_point": zero,
            "input_on_int8_grid": compare(ref, run_all(lambda x: base(int8_grid(x)), test)),
            "input_on_8bit_pixel_grid": compare(ref, run_all(lambda x: base(pixel_grid(x)), test))}


def compare(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    return {"top1_agreement": float((ref.argmax(1) == out.argmax(1)).float().mean()), "output_sqnr_db": sqnr_db(ref, out)}


def run_all(fn: Any, test: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x) for x in test])


def ort_quantize_static(fp32_path: Path, calib: list[torch.Tensor], out: Path) -> Any:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": x.numpy()} for x in calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(str(fp32_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return onnx.load(str(out))


def ours(base: torch.nn.Module, calib: list[torch.Tensor], config: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    model = copy.deepcopy(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = quantize_(model, {"mode": "static", **config}, calibration=calib)
    guard = report.meta["guard"]
    info = {"guard_warned": any(c.category.__name__ == "AccuracyWarning" for c in caught),
            "guard_before": guard["before"], "guard_measured_on": guard["measured_on"],
            "bias_correction_max_shift": report.meta["bias_correction"]["max_shift"],
            "quantized_layers": len(report.layers), "float_layers": guard.get("fallback", {}).get("float_layers", []),
            "guard_after": guard.get("fallback", {}).get("after")}
    return model, info


ZOO_SHAPES = {"lenet300": (1, 784), "mlp": (1, 784), "lenet5": (1, 1, 28, 28), "densenet_small": (1, 1, 28, 28),
              "resnet_cifar": (1, 3, 32, 32), "transformer_encoder": (1, 1, 28, 28), "mobilenet_v2": (1, 3, 224, 224),
              "minilm": (1, 2, 128)}


def zoo_one(name: str, shape: tuple[int, ...], g: torch.Generator) -> dict[str, Any]:
    """ONNX Runtime int8 (static, defaults) against ONNX Runtime fp32 of one zoo model, with ``quant_matrix_speed``'s
    protocol (batch 8, 2 threads, interleaved medians; where int8 is slower, measurement decides which layers, or
    the float model itself, to deploy in float)."""
    base = create_model(name, **({"pretrained": True} if name == "mobilenet_v2" else {})).eval()
    if name == "minilm":  # packed tokens (ids, mask): 128 real tokens per sentence
        calib = [torch.stack([torch.randint(1000, 20000, (16, 128), generator=g), torch.ones(16, 128, dtype=torch.long)], 1)
                 for _ in range(4)]
    else:
        calib = [torch.randn(16, *shape[1:], generator=g) for _ in range(4)]
    out = one_model(base, calib[0][:1], calib)
    return {"ort_fp32_ms": out["fp32_ms"], "ort_int8_ms": out["int8_ms"], "speedup": out["int8_speedup"],
            "deployed": out["deployed"], "final_speedup": out["final_speedup"], "float_layers": out["float_layers"],
            "met": out["met"], **{k: out[k] for k in ("choice", "choice_everything") if k in out}}


def zoo_speed() -> dict[str, Any]:
    """:func:`zoo_one` for every zoo model."""
    g = torch.Generator().manual_seed(SEED)
    out = {}
    for name, shape in ZOO_SHAPES.items():
        out[name] = zoo_one(name, shape, g)
        print(name, out[name], flush=True)
    return out


def main() -> None:
    timer = Timer()
    torch.manual_seed(SEED)
    base = create_model("mobilenet_v2", pretrained=True).eval()
    calib, test = data()
    ref = run_all(base, test)
    example = test[0][:1]
    metrics: dict[str, Any] = {"test_images": TEST, "calibration_images": CALIB_BATCHES * CALIB_SIZE}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_fp32(base, example, Path(tmp) / "fp32.onnx")
        peer = ort_quantize_static(Path(tmp) / "fp32.onnx", calib, Path(tmp) / "ort_static.onnx")
    variants = {"ours": ours(base, calib, {}),
                "ours_fallback": ours(base, calib, {"guard": {"fallback": "auto", "max_float_layers": MAX_FLOAT}})}
    protos = {}
    for key, (model, info) in variants.items():
        protos[key] = export_qdq(model, example)
        ort_out = run_all(OrtModel(protos[key], threads=THREADS), test)
        metrics[key] = {**info, "ort_vs_float": compare(ref, ort_out), "sim_vs_float": compare(ref, run_all(model, test)),
                        "ort_vs_sim_top1_agreement": compare(run_all(model, test), ort_out)["top1_agreement"]}
        print(key, metrics[key], flush=True)
    metrics["input_floor"] = floor = input_floor(base, test, ref, variants["ours"][0])
    print("input floor", floor, flush=True)
    peer_metrics = {"ort_vs_float": compare(ref, run_all(OrtModel(peer, threads=THREADS), test))}
    metrics["ort_fp32_vs_torch"] = compare(ref, run_all(OrtModel(fp32, threads=THREADS), test))
    kw = {"batch_size": BATCH, "threads": THREADS, "runs": RUNS, "warmup": WARMUP}
    med, per_round = interleaved({
        "ort_fp32_ms": lambda: measure_ort_latency(fp32, example, **kw),
        "ort_int8_ours_ms": lambda: measure_ort_latency(protos["ours"], example, **kw),
        "ort_int8_ours_fallback_ms": lambda: measure_ort_latency(protos["ours_fallback"], example, **kw),
        "ort_int8_quantize_static_ms": lambda: measure_ort_latency(peer, example, **kw),
    }, ROUNDS)
    metrics["latency"] = {**med, "rounds_ms": per_round, "setting": f"batch {BATCH}, {THREADS} threads, median of "
                          f"{ROUNDS} interleaved rounds x {RUNS} runs"}
    speedup = med["ort_fp32_ms"] / med["ort_int8_ours_ms"]
    metrics["latency"]["speedup_ours_vs_ort_fp32"] = speedup
    metrics["latency"]["speedup_ours_fallback_vs_ort_fp32"] = med["ort_fp32_ms"] / med["ort_int8_ours_fallback_ms"]
    peer_metrics["latency_ms"] = med["ort_int8_quantize_static_ms"]
    choice = choose_float_layers(variants["ours"][0], example, batch_size=BATCH, threads=THREADS, runs=RUNS, rounds=3)
    metrics["float_groups_ab"] = {"latency_ms": choice.latency_ms, "kept_in_float": choice.float_groups}
    metrics["zoo_int8_vs_fp32"] = zoo_speed()
    slower = [n for n, r in metrics["zoo_int8_vs_fp32"].items() if not r["met"]]
    agree, sqnr = metrics["ours"]["ort_vs_float"]["top1_agreement"], metrics["ours"]["ort_vs_float"]["output_sqnr_db"]
    targets = {
        "ort_top1_agreement_with_float": {"value": agree, "bar": ">= 0.95", "met": agree >= 0.95,
                                          "float_model_with_input_on_int8_grid": floor["input_on_int8_grid"]["top1_agreement"]},
        "ort_output_sqnr_db": {"value": sqnr, "bar": ">= 15", "met": sqnr >= 15},
        "speedup_int8_vs_ort_fp32_batch8_2threads": {"value": speedup, "bar": ">= 1.5", "met": speedup >= 1.5},
        "zoo_int8_no_slower_than_fp32": {"value": slower, "bar": "[] (every zoo model's deployed artefact no slower "
                                                                  "than fp32, or the fp32 graph deployed)", "met": not slower},
    }
    path = write_result("quant_mobilenet", metrics=metrics, baseline={"ort_fp32_ms": med["ort_fp32_ms"]},
                        peers={"onnxruntime_quantize_static": peer_metrics}, targets=targets, seed=SEED,
                        wall_s=timer.seconds)
    print(f"agreement {agree:.3f}, SQNR {sqnr:.1f} dB, speed-up {speedup:.2f}x; written {path}")


if __name__ == "__main__":
    main()
