"""lowrank: ResNet-20 Fashion-MNIST Tucker-2 at 2× fewer MACs + fine-tune; MiniLM FFN SVD at half the FFN parameters + healing.

ResNet-20: the cached baseline (``_baselines.resnet20_fmnist``), ``factorize_`` with
``macs_ratio: 0.5`` (first conv and classifier kept), then ``FT_EPOCHS`` epochs of
fine-tuning; test accuracy drop. MiniLM: every FFN linear (intermediate/output
dense) SVD-factorised at half its parameters, data-aware (truncation-aware whitening
on calibration sentences, ``data_aware: true``), healed by embedding distillation
towards the full model (as in ``fold_redundant_minilm``), side by side with plain
SVD of the weights healed the same way; downstream probe
accuracy drop on SMS spam and RT polarity.

Targets: drop ≤ 1 pt on each.
"""

from __future__ import annotations

import copy
import json
import sys

import torch
from _common import RESULTS, Timer, write_result

from torchslim.lowrank import factorize_
from torchslim.measure import count_macs, count_params, evaluate_accuracy
from torchslim.train import finetune

CALIB_BATCHES = 16  # MiniLM whitening: batches of 32 training sentences
HEAL_STEPS = 600  # MiniLM: AdamW steps of embedding distillation (lr as fold_redundant_minilm), the same for both SVDs
FT = {"epochs": 3, "batch_size": 128, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True,
      "weight_decay": 5e-4, "schedule": "cosine", "seed": 0}


def resnet_part() -> tuple[dict, dict, dict]:
    from _baselines import resnet20_fmnist

    model, data = resnet20_fmnist()
    model.eval()
    x = data.example_input()
    base_acc = evaluate_accuracy(model, data.loader("test", 1000))
    base = {"accuracy": base_acc, "macs": count_macs(model, x), "params": count_params(model)}
    rep = factorize_(model, {"macs_ratio": 0.5}, example_input=x)
    raw = evaluate_accuracy(model, data.loader("test", 1000))
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # healing runs on a GPU when there is one
    finetune(model.to(dev), data, FT, description="heal tucker2")
    model.cpu()
    acc = evaluate_accuracy(model, data.loader("test", 1000))
    m = {"accuracy": acc, "accuracy_before_finetune": raw, "macs": count_macs(model, x), "params": count_params(model),
         "macs_ratio": count_macs(model, x) / base["macs"], "factorized_layers": len(rep.layers),
         "finetune": FT, "finetune_device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}
    drop = 100 * (base_acc - acc)
    t = {"resnet20_drop_pt": {"value": drop, "bar": "<= 1.0", "met": drop <= 1.0},
         "resnet20_macs_ratio": {"value": m["macs_ratio"], "bar": "<= 0.5", "met": m["macs_ratio"] <= 0.5}}
    return m, base, t


def minilm_part() -> tuple[dict, dict, dict]:
    from fold_redundant_minilm import TASKS, embeddings, evaluate, heal, packed, subsets

    from torchslim.zoo.minilm import SentenceEncoder, load_minilm

    hf, tokenizer = load_minilm()
    full_model = SentenceEncoder(hf).eval()
    data = subsets()
    tok = {n: {"train": packed(tokenizer, data[n][0]), "test": packed(tokenizer, data[n][2])} for n in TASKS}
    full = {n: {k: embeddings(full_model, tok[n][k]) for k in ("train", "test")} for n in TASKS}
    base = evaluate(full_model, data, tok, full)
    ffn = r"re:encoder\.encoder\.layer\.\d+\.(intermediate|output)\.dense"
    heal_batches = [b for n in TASKS for b in tok[n]["train"]]
    teacher_targets = [full_model(b).detach() for b in heal_batches]
    calib = heal_batches[:: max(1, len(heal_batches) // CALIB_BATCHES)][:CALIB_BATCHES]
    runs = {}
    for data_aware in (True, False):  # ours (whitened on calibration inputs), then plain SVD of the weights
        model = copy.deepcopy(full_model)
        cfg = {"ratio": 0.5, "keep_first_last": False, "targets": {ffn: {}}, "data_aware": data_aware,
               "calibration": {"batches": CALIB_BATCHES}}
        rep = factorize_(model, cfg, calibration=calib if data_aware else None)
        p_before = sum(l.details["params_before"] for l in rep.layers)
        p_after = sum(l.details["params_after"] for l in rep.layers)
        unhealed = evaluate(model, data, tok, full)
        heal(model, teacher_targets, heal_batches, steps=HEAL_STEPS)
        after = evaluate(model, data, tok, full)
        runs[data_aware] = {**after, "unhealed": unhealed, "ffn_params_ratio": p_after / p_before,
                            "factorized_layers": len(rep.layers), "data_aware": data_aware}
        print("data_aware" if data_aware else "plain", runs[data_aware], flush=True)
    after = runs[True]
    m = {**runs[True], "plain_svd": runs[False],
         "setting": f"every FFN dense of the 6 layers at ratio 0.5; whitening on {CALIB_BATCHES} calibration batches of "
                    f"training sentences; heal {HEAL_STEPS} AdamW steps (embedding MSE to the full model) for both"}
    t = {}
    for n in TASKS:
        drop = 100 * (base[f"accuracy_{n}"] - after[f"accuracy_{n}"])
        t[f"minilm_{n}_drop_pt"] = {"value": drop, "bar": "<= 1.0", "met": drop <= 1.0}
    return m, base, t


def main() -> None:
    timer = Timer()
    torch.manual_seed(0)
    parts = sys.argv[1:] or ["resnet", "minilm"]
    metrics, baseline, targets = {}, {}, {}
    if "resnet" in parts:
        torch.set_num_threads(1)  # small CNN on a shared 2-core machine: one thread is faster and steadier
        m, b, t = resnet_part()
        metrics["resnet20_fmnist_tucker2"], baseline["resnet20_fmnist"] = m, b
        targets.update(t)
        print("resnet", m, t, flush=True)
    if "minilm" in parts:
        torch.set_num_threads(2)
        m, b, t = minilm_part()
        metrics["minilm_ffn_svd"], baseline["minilm"] = m, b
        targets.update(t)
        print("minilm", m, t, flush=True)
    notes = None
    previous = RESULTS / "lowrank.json"
    if len(parts) < 2 and previous.exists():
        # a partial run keeps the other part's figures from the earlier file, saying where they come from
        old = json.loads(previous.read_text())
        kept = [p for p in ("resnet", "minilm") if p not in parts and _PART_KEYS[p][0] in old.get("metrics", {})]
        for part in kept:
            metric_key, baseline_key, target_prefix = _PART_KEYS[part]
            metrics[metric_key] = old["metrics"][metric_key]
            baseline[baseline_key] = old["baseline"].get(baseline_key)
            targets.update({k: v for k, v in old.get("targets", {}).items() if k.startswith(target_prefix)})
            metrics[metric_key]["measured"] = old["metrics"][metric_key].get("measured") or f"{old['date']}, {old['machine']}"
        for part in parts:
            metrics[_PART_KEYS[part][0]]["measured"] = "this run (see date, machine)"
        notes = f"parts run now: {', '.join(parts)}; kept from the earlier file: {', '.join(kept) or 'none'}"
    elif len(parts) < 2:
        notes = f"partial run: {', '.join(parts)}"
    write_result("lowrank", metrics=metrics, baseline=baseline, targets=targets, wall_s=timer.seconds, notes=notes)


_PART_KEYS = {
    "resnet": ("resnet20_fmnist_tucker2", "resnet20_fmnist", "resnet20_"),
    "minilm": ("minilm_ffn_svd", "minilm", "minilm_"),
}


if __name__ == "__main__":
    main()
