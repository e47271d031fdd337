"""quant_matrix_speed: the int8 artefact of every non-zoo matrix model against ONNX Runtime fp32 of the same model.

Issue 20, acceptance 4: the int8 artefact of every quantized model must be no slower than
ONNX Runtime fp32 of the same model, and where int8 loses on a layer, measurement decides to
keep it float. The zoo models are timed by ``quant_mobilenet`` (``zoo_one``); this covers the
rest of :data:`torchslim.testing.architectures.ARCHITECTURES` (the Hugging Face entries
``bert``, ``bert_cls``, ``gpt2``, ``llama_gqa``, ``vit_hf``, ``swin``, ``gptj``, ``segformer``, ``resnet_hf``,
``convnext_hf``, ``t5`` and the everyday PyTorch ones ``vit_mha``, ``concat_se``, ``glu``, ``tied``,
``gru_text``, ``lstm_text``, ``mbv3_block``, ``torch_encoder``, ``weight_norm``, ``seq2seq``).

Protocol, per model:

* static int8 ``quantize_(model, {"mode": "static", "guard": {"enabled": False}})`` on the
  Architecture's own calibration batches (random weights and inputs: the guard's figures
  would mean nothing);
* the int8 artefact is what ``ts.export(..., format="onnx")`` writes for a quantized model
  (:func:`torchslim.deploy.check.onnx_artefact`): ``export_qdq`` then ``ort_optimize``;
  fp32 is ``export_fp32`` of the float model, run as exported (ONNX Runtime applies its own
  ``ORT_ENABLE_ALL`` optimisation to both when it loads them);
* latency: :func:`measure_ort_latency`, the example's first sample repeated to batch ``BATCH``
  (for the Hugging Face dict batches: the unpadded first sequence, every key repeated),
  ``THREADS`` intra-op threads, ``RUNS`` timed runs after ``WARMUP``, in ``ROUNDS``
  interleaved rounds (each round runs every variant once, so machine load falls on all alike);
  the figure is the median over rounds of the per-round medians;
* where the int8 artefact is slower than fp32 (speed-up < 1.0), the documented decision:
  :func:`choose_float_layers` (whole-graph A/B in ONNX Runtime over :func:`layer_groups`,
  ``CHOICE_ROUNDS`` rounds, a group kept in float only when its graph is > 3 % faster); the
  chosen layers are exported in float through :func:`~torchslim.quant.guard.kept_in_float`
  (the graph ``choose_float_layers`` timed, then ``ort_optimize``), and fp32, int8 and the
  final artefact are timed again in one interleaved set of rounds (both figures reported);
* the float model itself is a candidate of that decision (``reference``): unless the int8 graph chosen
  measured faster than its fp32 graph by more than the margin, ``choose_float_layers`` sets ``float_model`` and the deployed
  artefact is the fp32 graph, byte for byte (no slower by construction; its timing against fp32 is
  then an A/A comparison of one file and shows the protocol's noise);
* where that final artefact is still slower, the same decision once more with one group added
  to :func:`layer_groups`: ``everything`` (every quantized layer and every ``quant_act.<point>``
  activation quantizer, i.e. no QDQ left; measurement still decides, by the same 3 % margin),
  timed again the same way; both choices are recorded (``choice``, ``choice_everything``);
* the final artefact in ONNX Runtime against the torch simulation (with the same layers in
  float) on the example and calibration batches: :func:`check_onnx` top-1 agreement (argmax
  over the last axis, per token for sequence outputs) and mean cosine of the first output.

Target, per model: final speed-up (fp32 ms / final ms) >= 1.0, raw: no noise allowance, or the deployed
graph is the fp32 graph itself (measurement chose the float model).
The per-round figures and their spread ((max - min) / median over rounds) are written beside
each median so a near miss can be read against the noise.
"""

from __future__ import annotations

import copy
import statistics
import traceback
import warnings
from typing import Any

import torch
from _common import Timer, interleaved, write_result

from torchslim.deploy import (
    choose_float_layers,
    export_fp32,
    export_qdq,
    layer_groups,
    measure_ort_latency,
    ort_optimize,
)
from torchslim.deploy.check import check_onnx
from torchslim.quant import quantize_
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.guard import kept_in_float
from torchslim.testing.architectures import ARCHITECTURES, ZOO

SEED = 0
THREADS, BATCH, RUNS, WARMUP, ROUNDS, CHOICE_ROUNDS = 2, 8, 20, 3, 5, 3
KW = {"batch_size": BATCH, "threads": THREADS, "runs": RUNS, "warmup": WARMUP}


def artefact(model: torch.nn.Module, example: Any, floats: list[str]) -> bytes:
    """The deployed int8 graph (``export_qdq`` + ``ort_optimize``) with ``floats`` run in float."""
    with kept_in_float(model, floats):
        return ort_optimize(export_qdq(model, example)).SerializeToString()


def spread(rounds: list[float]) -> float:
    return (max(rounds) - min(rounds)) / statistics.median(rounds)


def timed(graphs: dict[str, bytes], example: Any) -> tuple[dict[str, float], dict[str, list[float]]]:
    return interleaved({k: (lambda g=g: measure_ort_latency(g, example, **KW)) for k, g in graphs.items()}, ROUNDS)


def agreement(model: torch.nn.Module, graph: bytes, batches: list[Any], floats: list[str]) -> dict[str, float]:
    with kept_in_float(model, floats):
        check = check_onnx(model, graph, batches, threads=THREADS)
    return {"top1_agreement": check.top1_agreement, "cosine": check.cosine, "min_cosine": check.min_cosine,
            "samples": check.samples}


def everything(model: torch.nn.Module) -> dict[str, list[str]]:
    """:func:`layer_groups` plus one group of every quantized layer and activation point (no QDQ left)."""
    groups = layer_groups(model)
    points = [n for n, m in model.named_modules() if n.startswith("quant_act.") and isinstance(m, FakeQuantize)]
    return {**groups, "everything": [n for names in groups.values() for n in names] + points}


def one(name: str) -> dict[str, Any]:
    """fp32 vs int8 (vs int8 with the measured float choice) of one architecture."""
    torch.manual_seed(SEED)
    arch = ARCHITECTURES[name]()
    return one_model(arch.model.eval(), arch.example, arch.calibration)


def one_model(base: torch.nn.Module, example: Any, calibration: list[Any]) -> dict[str, Any]:
    """fp32 vs int8 (vs int8 with the measured float choice) of the float model ``base`` (the protocol above)."""
    model = copy.deepcopy(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = quantize_(model, {"mode": "static", "guard": {"enabled": False}}, calibration=calibration)
    graphs = {"fp32": export_fp32(base, example).SerializeToString(), "int8": artefact(model, example, [])}
    med, per_round = timed(graphs, example)
    out: dict[str, Any] = {
        "quantized_layers": len(report.layers), "skipped": len(report.skipped),
        "fp32_ms": med["fp32"], "int8_ms": med["int8"], "int8_speedup": med["fp32"] / med["int8"],
        "rounds_ms": per_round, "spread": {k: spread(v) for k, v in per_round.items()},
    }
    floats: list[str] = []
    out["final_ms"], final_fp32 = med["int8"], med["fp32"]
    for key, groups in (("choice", None), ("choice_everything", everything(model))):
        if final_fp32 / out["final_ms"] >= 1.0:
            break
        choice = choose_float_layers(model, example, groups, reference=base, batch_size=BATCH, threads=THREADS,
                                     runs=RUNS, rounds=CHOICE_ROUNDS)
        floats = list(dict.fromkeys(choice.float_layers))  # a combined choice may name a layer twice
        # the deployed graph: the float model's own unless the int8 choice beat its fp32 graph by the margin
        graphs["int8_float_choice"] = graphs["fp32"] if choice.float_model else artefact(model, example, floats)
        med2, per_round2 = timed(graphs, example)
        out[key] = {"float_groups": choice.float_groups, "float_layers": floats, "choice_latency_ms": choice.latency_ms,
                    "float_model": choice.float_model,
                    "fp32_ms": med2["fp32"], "int8_ms": med2["int8"], "int8_float_choice_ms": med2["int8_float_choice"],
                    "speedup": med2["fp32"] / med2["int8_float_choice"], "rounds_ms": per_round2,
                    "spread": {k: spread(v) for k, v in per_round2.items()}}
        out["final_ms"], final_fp32 = med2["int8_float_choice"], med2["fp32"]
        if choice.float_model:
            break
    out["float_layers"] = floats
    out["final_speedup"] = final_fp32 / out["final_ms"]
    final_graph = graphs.get("int8_float_choice", graphs["int8"])
    float_deployed = final_graph == graphs["fp32"]
    out["deployed"] = "fp32 (the float model's graph)" if float_deployed else "int8"
    if float_deployed:  # the float model is deployed: ONNX Runtime against the float model itself
        out["ort_vs_simulation"] = agreement(base, final_graph, [example, *calibration], [])
    else:
        out["ort_vs_simulation"] = agreement(model, final_graph, [example, *calibration], floats)
    # met: the deployed graph measured no slower than fp32, or it is the fp32 graph itself (the same bytes: its
    # speed-up above is then an A/A timing of one file, the noise of the protocol, and is reported as such)
    out["met"] = out["final_speedup"] >= 1.0 or float_deployed
    return out


def main() -> None:
    timer = Timer()
    names = [n for n in ARCHITECTURES if n not in ZOO]
    metrics: dict[str, Any] = {"setting": f"batch {BATCH} (first sample repeated), {THREADS} threads, median of {ROUNDS} "
                               f"interleaved rounds x {RUNS} runs; int8 = export_qdq + ort_optimize", "models": {}}
    for name in names:
        try:
            metrics["models"][name] = one(name)
        except Exception as e:  # noqa: BLE001 - recorded, never hidden: the exact error and where it came from
            metrics["models"][name] = {"error": f"{type(e).__name__}: {e}", "where": traceback.format_exc(limit=-3)}
        r = metrics["models"][name]
        print(name, {k: r.get(k) for k in ("fp32_ms", "int8_ms", "final_ms", "final_speedup", "float_layers", "error")},
              flush=True)
    models = metrics["models"]
    missed = [n for n, r in models.items() if not r.get("met", False)]
    metrics["table"] = [
        {"model": n, "fp32_ms": r.get("fp32_ms"), "int8_ms": r.get("int8_ms"), "final_ms": r.get("final_ms"),
         "final_speedup": r.get("final_speedup"), "deployed": r.get("deployed"), "float_layers": r.get("float_layers"),
         "error": r.get("error")}
        for n, r in models.items()
    ]
    targets = {"matrix_int8_no_slower_than_ort_fp32": {
        "value": missed, "bar": "[] (every non-zoo matrix model: final speed-up >= 1.0 raw, or the fp32 graph deployed)",
        "met": not missed}}
    path = write_result("quant_matrix_speed", metrics=metrics, targets=targets, seed=SEED, wall_s=timer.seconds)
    print(f"missed: {missed}; written {path} in {timer.seconds} s")


if __name__ == "__main__":
    main()
