"""quant_minilm: all-MiniLM-L6-v2 int8 in ONNX Runtime, side by side with ORT quantize_dynamic and torch.ao.

* Ours: ``quantize_`` static (per-channel int8 weights, per-tensor uint8 activations
  calibrated on 16 batches of 16 training sentences, MSE-optimal clipping, statistics over real tokens:
  the batches' padding is skipped by ``activation.mask_key``), exported as QDQ ONNX with our
  scales; ONNX Runtime runs the linears as MatMulIntegerToFloat. SmoothQuant (``activation.smooth``) on the
  linears that read a LayerNorm (Q/K/V and each FFN's first dense): its strength is chosen among
  ``SMOOTH_CHOICES`` (``None`` = off) by the mean cosine to fp32 of ``SELECT`` training sentences that
  are not calibration data (training sentences only: the test splits are never used to choose). ``ort_optimize`` (ONNX Runtime's offline
  optimisation + every Linear's bias moved into its integer matmul + each self-attention core fused into one
  ``MultiHeadAttention``, without the mask when no token is padded; with padding the outputs are
  bit-identical, checked here on padded test sentences) is what is timed
  and embedded; the same without the attention fusion and the plain QDQ file are timed beside it.
* Peers: ONNX Runtime ``quantize_dynamic`` (int8 weights, dynamic uint8 activations) on the
  same fp32 ONNX graph; ``torch.ao.quantization.quantize_dynamic`` (eager, qint8 Linear).
* Quality: cosine similarity of L2-normalised mean-pooled sentence embeddings to fp32 (the
  fp32 reference is the fp32 ONNX export, checked equal to torch eager), over every test
  sentence; downstream accuracy of a logistic regression trained on each variant's own
  embeddings (SMS spam, RT sentence polarity; fixed 80/20 splits of torchslim.data.text; the
  RT training split is subsampled to 3,000 sentences to fit the time budget, test splits whole).
* Latency: batch 32 x 128 tokens (real text, no padding), 2 threads; every variant measured in each of
  ``ROUNDS`` interleaved rounds (same machine state), medians of the round medians. Without padding the
  attention mask is all zero: Hugging Face's SDPA attention (the torch fp32 baseline) then drops it, and
  our fused graph's ``If`` takes ``MultiHeadAttention`` without it. ``padded_*``: torch fp32 and ours on
  the same batch with its last 32 tokens padded (both run the masked path), for comparison.
  ``--latency-only`` rebuilds the models (the recorded smoothing strength, no selection), checks that our
  quantized model's state is bit-identical to the full run's (SHA-256 of its state dict) and refuses
  otherwise, keeps the full run's accuracies and cosines and re-measures only the latencies.
  ``--accuracy-only`` is its counterpart: the same check, then the accuracies and cosines are
  re-measured and the recorded latencies kept (for a change to the probe, not to the model).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, Timer, interleaved, write_result

from torchslim.data.text import load_text
from torchslim.deploy import OrtModel, export_fp32, export_qdq, measure_ort_latency, ort_optimize
from torchslim.measure import linear_probe, measure_latency, num_threads
from torchslim.quant import quantize_
from torchslim.zoo.minilm import load_minilm, mean_pool, tokenize

SEED = 0
THREADS, BATCH, SEQ, RUNS, ROUNDS = 2, 32, 128, 10, 5
RT_TRAIN = 3000
CALIB_BATCHES, CALIB_SIZE = 32, 16  # quantize_ uses the first calibration.batches (16) of these
SMOOTH_CHOICES: tuple[float | None, ...] = (None, 0.5, 0.75)
SELECT = 600
SMOKE = int(os.environ.get("QUANT_MINILM_SMOKE", "0"))


class Pooled(nn.Module):
    """BERT + attention-masked mean pooling + L2 normalisation (the sentence embedding)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(mean_pool(out, attention_mask), dim=-1)


def batches(tokenizer: Any, texts: list[str], size: int = 64) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Length-sorted batches (padding to the longest in each batch), with their original indices."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = []
    for start in range(0, len(texts), size):
        idx = order[start : start + size]
        out.append((idx, tokenize(tokenizer, [texts[i] for i in idx], SEQ)))
    return out


@torch.no_grad()
def embed(fn: Any, prepared: list[tuple[np.ndarray, dict[str, torch.Tensor]]], n: int) -> np.ndarray:
    out = np.zeros((n, 384), dtype=np.float32)
    for idx, enc in prepared:
        e = fn(enc)
        out[idx] = (e[0] if isinstance(e, tuple) else e).detach().numpy()
    return out


def downstream(train_e: np.ndarray, train_y: list[int], test_e: np.ndarray, test_y: list[int]) -> float:
    """Logistic-regression probe, penalty chosen by 5-fold CV on the train split (``torchslim.measure.linear_probe``)."""
    return linear_probe(train_e, train_y, test_e, test_y).accuracy


def ort_dynamic(fp32_path: Path, out: Path) -> Any:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8)
    return onnx.load(str(out))


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names and raw bytes, sorted): equal only for bit-identical models."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(only: str | None = None) -> None:
    """Full run, or ``only="latency"`` / ``only="accuracy"`` on the recorded run's model (SHA-256 checked)."""
    old: dict[str, Any] = {}
    only_latency, only_accuracy = only == "latency", only == "accuracy"
    if only:
        previous = RESULTS / "quant_minilm.json"
        old = json.loads(previous.read_text()) if previous.exists() else {}
        if "ours_state_sha256" not in old.get("metrics", {}):
            raise SystemExit(f"--{only}-only re-measures a full run that recorded its model's SHA-256; run the benchmark first")
    timer = Timer()
    torch.manual_seed(SEED)
    bert, tokenizer = load_minilm()
    fp32 = Pooled(bert).eval()
    sets = {"sms-spam": load_text("sms-spam"), "rt-polarity": load_text("rt-polarity")}
    texts: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(SEED)
    for name, s in sets.items():
        tr_x, tr_y = list(s.train_texts), [int(v) for v in s.train_labels]
        if name == "rt-polarity" and len(tr_x) > RT_TRAIN:
            keep = np.sort(rng.choice(len(tr_x), RT_TRAIN, replace=False))
            tr_x, tr_y = [tr_x[i] for i in keep], [tr_y[i] for i in keep]
        te_x, te_y = list(s.test_texts), [int(v) for v in s.test_labels]
        if SMOKE:  # a seconds-long dry run of the whole script (nothing is written)
            tr_x, tr_y, te_x, te_y = tr_x[:SMOKE], tr_y[:SMOKE], te_x[:SMOKE], te_y[:SMOKE]
        texts[name] = {"train": (tr_x, tr_y), "test": (te_x, te_y)}

    # calibration: training sentences of both tasks, padded to the longest in each batch
    pool = texts["sms-spam"]["train"][0] + texts["rt-polarity"]["train"][0]
    pick = rng.choice(len(pool), min(len(pool), CALIB_BATCHES * CALIB_SIZE), replace=False)
    calib = [tokenize(tokenizer, [pool[i] for i in pick[b : b + CALIB_SIZE]], SEQ) for b in range(0, len(pick), CALIB_SIZE)]

    long_text = " ".join(pool[i % len(pool)] for i in range(60))
    example = tokenize(tokenizer, [long_text] * BATCH, SEQ)  # 32 x 128 real tokens
    assert int(example["attention_mask"].sum()) == BATCH * SEQ
    # the same batch with its last quarter padded (every row: the latency helpers repeat the first row),
    # so that the masked attention path is timed too
    padded = {k: v.clone() for k, v in example.items()}
    padded["attention_mask"][:, SEQ - SEQ // 4 :] = 0
    padded["input_ids"][:, SEQ - SEQ // 4 :] = tokenizer.pad_token_id

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx"
        export_fp32(fp32, example, fp32_path)
        # SmoothQuant strength: chosen on held-out training sentences (cosine to fp32 of the fake-quant model)
        rest = np.setdiff1d(np.arange(len(pool)), pick)
        sel_idx = np.random.default_rng(SEED + 1).choice(rest, min(len(rest), SELECT), replace=False)
        if SMOKE:  # a dry run has no held-out sentences left
            sel_idx = pick[:8]
        if not len(sel_idx):
            raise SystemExit("no held-out training sentences left to choose the smoothing strength")
        sel = batches(tokenizer, [pool[i] for i in sel_idx])
        choices = (old["metrics"]["smooth_alpha"],) if only else SMOOTH_CHOICES
        with num_threads(1):
            ref_sel = embed(lambda enc: fp32(**enc), sel, len(sel_idx)) if len(choices) > 1 else None
            selection: dict[str, float] = {}
            best: tuple[float, Any, Any, float] | None = None
            for alpha in choices:
                candidate = Pooled(copy.deepcopy(bert)).eval()
                t0 = time.perf_counter()
                rep = quantize_(candidate, {"mode": "static", "activation": {"observer": "mse", "smooth": alpha}},
                                calibration=calib)
                seconds = time.perf_counter() - t0
                if ref_sel is None:  # one choice: nothing to select
                    best = (1.0, candidate, rep, seconds)
                    break
                cos_sel = float(np.sum(embed(lambda enc, c=candidate: c(**enc), sel, len(sel_idx)) * ref_sel, axis=1).mean())
                selection[str(alpha)] = cos_sel
                print("smooth", alpha, "selection cosine", round(cos_sel, 5), flush=True)
                if best is None or cos_sel > best[0]:
                    best = (cos_sel, candidate, rep, seconds)
            assert best is not None
            _, ours, report, quant_s = best
            ours_qdq = export_qdq(ours, example, work / "ours.onnx")
            ours_proto = ort_optimize(ours_qdq)
            ours_unfused = ort_optimize(ours_qdq, fuse_attention=False)  # timed beside it
            dyn_proto = ort_dynamic(fp32_path, work / "ort_dynamic.onnx")
            torch_ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8)
        variants = {
            "fp32": OrtModel(fp32_path, threads=1),
            "ours_int8": OrtModel(ours_proto, threads=1),
            "ort_quantize_dynamic": OrtModel(dyn_proto, threads=1),
            "torch_ao_dynamic": lambda enc: torch_ao(**enc),
        }
        check = tokenize(tokenizer, texts["sms-spam"]["test"][0][:16], SEQ)
        with torch.no_grad():
            eager_vs_ort = float(F.cosine_similarity(fp32(**check), variants["fp32"](check)).min())
        # the MultiHeadAttention fusion must not change a bit (padded real sentences)
        attention_identical = bool(np.array_equal(variants["ours_int8"](check).numpy(),
                                                  OrtModel(ours_unfused, threads=1)(check).numpy()))
        if not attention_identical:
            raise SystemExit("ort_optimize's attention fusion changed the int8 model's outputs")
        fused_attention = int(next(p.value for p in ours_proto.metadata_props if p.key == "torchslim.fused_attention"))

        smoothing = report.meta.get("smoothing", {})
        sha = state_sha256(ours)
        metrics: dict[str, Any]
        if only and sha != old["metrics"]["ours_state_sha256"]:
            raise SystemExit(f"--{only}-only: the rebuilt int8 model differs from the full run's; its recorded figures would not hold")
        if only_accuracy:
            metrics = {k: v for k, v in old["metrics"].items() if k not in variants}
            recorded = str(old["metrics"].get("latency_measured", ""))
            metrics["latency_measured"] = recorded if recorded[:2] == "20" else old.get("date", "?")
            metrics["accuracy_measured"] = "this run (see date, machine)"
            metrics["calibration_tokens"] = report.meta.get("calibration_tokens")
        elif only_latency:
            metrics = {k: v for k, v in old["metrics"].items() if k != "latency"}
            metrics["accuracy_measured"] = old["metrics"].get("accuracy_measured") or old.get("date", "?")
            metrics["latency_measured"] = "this run (see date, machine)"
            metrics["fused_attention_layers"] = fused_attention
        else:
            metrics = {"fp32_ort_vs_torch_min_cosine": eager_vs_ort, "quantize_seconds": quant_s,
                       "layers_quantized": len(report.layers),
                       "activation_placement": report.meta["activation_placement"]["method"],
                       "smooth_alpha": smoothing.get("alpha"),
                       "smooth_selection_cosine": selection,
                       "smoothed_layernorms": len(smoothing.get("groups", [])),
                       "smoothed_layers": sum(len(g["layers"]) for g in smoothing.get("groups", [])),
                       "ours_state_sha256": sha,
                       "calibration_tokens": report.meta.get("calibration_tokens"),
                       "fused_attention_layers": fused_attention}
        emb: dict[str, dict[str, dict[str, np.ndarray]]] = {v: {} for v in variants}
        with num_threads(1):
            for name, t in texts.items():
                if only_latency:
                    break
                for split in ("train", "test"):
                    prepared = batches(tokenizer, t[split][0])
                    for v, fn in variants.items():
                        emb[v].setdefault(name, {})[split] = embed(fn, prepared, len(t[split][0]))
                print("embedded", name, timer.seconds, flush=True)
        for v in variants:
            if only_latency:
                break
            row: dict[str, Any] = {}
            cos_all = []
            for name, t in texts.items():
                acc = downstream(emb[v][name]["train"], t["train"][1], emb[v][name]["test"], t["test"][1])
                row[f"{name}_accuracy"] = acc
                if v != "fp32":
                    cos = np.sum(emb[v][name]["test"] * emb["fp32"][name]["test"], axis=1)
                    cos_all.append(cos)
                    row[f"{name}_mean_cosine"] = float(cos.mean())
            if cos_all:
                c = np.concatenate(cos_all)
                row["mean_cosine"], row["min_cosine"], row["p1_cosine"] = float(c.mean()), float(c.min()), float(np.percentile(c, 1))
            metrics[v] = row

        timed = {} if only_accuracy else {
            "torch_fp32_eager_ms": lambda: measure_latency(fp32, example, batch_size=BATCH, threads=THREADS, runs=RUNS),
            "ort_fp32_ms": lambda: measure_ort_latency(fp32_path, example, batch_size=BATCH, threads=THREADS, runs=RUNS),
            "ours_int8_ms": lambda: measure_ort_latency(ours_proto, example, batch_size=BATCH, threads=THREADS, runs=RUNS),
            "ours_int8_attention_unfused_ms":
                lambda: measure_ort_latency(ours_unfused, example, batch_size=BATCH, threads=THREADS, runs=RUNS),
            "ours_int8_qdq_unoptimized_ms":
                lambda: measure_ort_latency(ours_qdq, example, batch_size=BATCH, threads=THREADS, runs=RUNS),
            "ort_quantize_dynamic_ms":
                lambda: measure_ort_latency(dyn_proto, example, batch_size=BATCH, threads=THREADS, runs=RUNS),
            "torch_ao_dynamic_ms": lambda: measure_latency(torch_ao, example, batch_size=BATCH, threads=THREADS, runs=RUNS),
            "padded_torch_fp32_eager_ms": lambda: measure_latency(fp32, padded, batch_size=BATCH, threads=THREADS, runs=RUNS),
            "padded_ours_int8_ms": lambda: measure_ort_latency(ours_proto, padded, batch_size=BATCH, threads=THREADS, runs=RUNS),
        }
        if only_accuracy:
            lat: dict[str, Any] = old["metrics"]["latency"]
        else:
            medians, per_round = interleaved(timed, 1 if SMOKE else ROUNDS)
            lat = {**medians, "rounds_ms": per_round}
            lat["speedup_ours_vs_torch_fp32"] = lat["torch_fp32_eager_ms"] / lat["ours_int8_ms"]
            lat["speedup_ort_dynamic_vs_torch_fp32"] = lat["torch_fp32_eager_ms"] / lat["ort_quantize_dynamic_ms"]
            lat["speedup_torch_ao_vs_torch_fp32"] = lat["torch_fp32_eager_ms"] / lat["torch_ao_dynamic_ms"]
            lat["padded_speedup_ours_vs_torch_fp32"] = lat["padded_torch_fp32_eager_ms"] / lat["padded_ours_int8_ms"]
        metrics["latency"] = lat

    if SMOKE:
        print(metrics)
        return
    ours_row, base_row = metrics["ours_int8"], metrics["fp32"]
    targets = {
        "mean_cosine_to_fp32": {"value": round(ours_row["mean_cosine"], 5), "bar": 0.99},
        "sms_spam_drop_pt": {"value": round(100 * (base_row["sms-spam_accuracy"] - ours_row["sms-spam_accuracy"]), 3), "bar": 0.5},
        "rt_polarity_drop_pt": {"value": round(100 * (base_row["rt-polarity_accuracy"] - ours_row["rt-polarity_accuracy"]), 3), "bar": 0.5},
        "speedup_vs_torch_fp32": {"value": round(lat["speedup_ours_vs_torch_fp32"], 3), "bar": 2.5,
                                  "met": bool(lat["speedup_ours_vs_torch_fp32"] >= 2.5)},  # judged unrounded
    }
    for key, t in targets.items():
        if "met" not in t:
            t["met"] = bool(t["value"] <= t["bar"]) if key.endswith("drop_pt") else bool(t["value"] >= t["bar"])
    path = write_result(
        "quant_minilm",
        metrics=metrics,
        baseline={"fp32": base_row, "torch_fp32_eager_ms": lat["torch_fp32_eager_ms"]},
        peers={"ort_quantize_dynamic": metrics["ort_quantize_dynamic"], "torch_ao_dynamic": metrics["torch_ao_dynamic"]},
        targets=targets,
        seed=SEED,
        wall_s=timer.seconds,
        notes=(f"latency: batch {BATCH} x {SEQ} tokens, {THREADS} threads, median over {ROUNDS} interleaved rounds of "
               f"the median of {RUNS} runs; ours = ort_optimize(export_qdq(...)) (bias fused into MatMulIntegerToFloat, each attention core "
               f"into one MultiHeadAttention, which an If runs without the mask when no token is padded, as Hugging Face's SDPA "
               f"path in the torch baseline drops it: with padding the outputs are bit-identical to the unfused graph, checked on padded "
               f"test sentences); padded_*: the latency batch with its last {SEQ // 4} tokens padded; "
               f"embeddings computed on 1 thread; RT train subsampled to {RT_TRAIN}; logistic-regression probe: torchslim.measure.linear_probe (C by 5-fold CV on the train split); "
               f"SmoothQuant alpha chosen among {SMOOTH_CHOICES} by cosine to fp32 on {SELECT} held-out training sentences."
               + (" --latency-only: latencies re-measured in this run; accuracies and cosines from the full run of "
                  f"{metrics['accuracy_measured']} (same int8 model: state SHA-256 checked)." if only_latency else "")
               + (" --accuracy-only: accuracies and cosines re-measured in this run; latencies from the run of "
                  f"{metrics['latency_measured']} (same int8 model: state SHA-256 checked)." if only_accuracy else "")),
    )
    print(path)
    for key, t in targets.items():
        print(f"{key}: {t['value']} (bar {t['bar']}) {'met' if t['met'] else 'MISSED'}")


if __name__ == "__main__":
    modes = [a for a in sys.argv[1:] if a in ("--latency-only", "--accuracy-only")]
    if len(modes) > 1:
        raise SystemExit("--latency-only and --accuracy-only exclude each other")
    main(only=modes[0][2:-5] if modes else None)
