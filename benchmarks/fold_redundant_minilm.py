"""fold_redundant_minilm: drop 2 of MiniLM's 6 layers chosen by similarity vs random vs last-2, healed equally.

Every one of the 15 pairs of layers is removed and healed the same way
(``HEAL_STEPS`` steps of embedding distillation towards the full model, MSE of
mean-pooled embeddings, on unlabeled training sentences of both tasks; same batch
order and dropout masks for every pair), then scored: mean cosine of the test
embeddings to the full model's, and downstream accuracy of a logistic-regression
probe (trained on the model's own train embeddings) on SMS spam and RT sentence
polarity, every test sentence, on fixed seeded train subsets. Each criterion's
choice is then one row of that table: the three similarity criteria of
``drop_layers_`` (ShortGPT block influence, i.e. each layer's input/output cosine;
output similarity, the final embedding's cosine to the full model's with layers
skipped, chosen greedily; weight similarity to the previous layer), a seeded
random draw and the last two. The table also gives each choice's rank among all
15 pairs and the expectation of a uniformly random pair.

The probe is ``torchslim.measure.linear_probe``, the one every MiniLM benchmark
uses: embeddings L2-normalised and standardised, the penalty chosen by 5-fold
cross-validation on the train split.

Target: each similarity choice ≥ both random (the seeded draw) and last-2 on
cosine and on downstream accuracy. Run: ``PYTHONPATH=src .venv/bin/python
benchmarks/fold_redundant_minilm.py`` (~30 min).
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import statistics
from typing import Any

import torch
import torch.nn.functional as F
from _common import Timer, write_result

from torchslim.data.text import load_text
from torchslim.fold.redundant import drop_layers_
from torchslim.graph.surgery import remove_from_container
from torchslim.measure import linear_probe
from torchslim.zoo.minilm import SentenceEncoder, load_minilm, pack_tokens, tokenize

N_TRAIN, N_TEST, MAX_LEN, BATCH = 1000, 1_000_000, 64, 32
HEAL_STEPS, HEAL_LR = 150, 5e-5
TASKS = ("sms-spam", "rt-polarity")
BLOCKS = r"encoder\.encoder\.layer\.\d+"
CRITERIA = ("block_influence", "output_similarity", "weight_similarity", "random", "last")
SIMILARITY = CRITERIA[:3]
METRICS = ("cosine_to_full", *(f"accuracy_{n}" for n in TASKS))


def subsets(seed: int = 0) -> dict[str, Any]:
    """Fixed seeded subsets of each task's train and test split."""
    rng = random.Random(seed)
    out = {}
    for name in TASKS:
        t = load_text(name)
        tr = rng.sample(range(len(t.train_texts)), min(N_TRAIN, len(t.train_texts)))
        te = rng.sample(range(len(t.test_texts)), min(N_TEST, len(t.test_texts)))
        out[name] = (
            [t.train_texts[i] for i in tr], [t.train_labels[i] for i in tr],
            [t.test_texts[i] for i in te], [t.test_labels[i] for i in te],
        )
    return out


def packed(tokenizer: Any, texts: list[str]) -> list[torch.Tensor]:
    return [pack_tokens(tokenize(tokenizer, texts[i : i + BATCH], MAX_LEN)) for i in range(0, len(texts), BATCH)]


@torch.no_grad()
def embeddings(model: SentenceEncoder, batches: list[torch.Tensor]) -> torch.Tensor:
    model.eval()
    return torch.cat([model(b) for b in batches])


def heal(student: SentenceEncoder, teacher_targets: list[torch.Tensor], batches: list[torch.Tensor], seed: int = 0,
         steps: int = HEAL_STEPS) -> None:
    """Embedding distillation: MSE between student and full-model embeddings, fixed steps, order and dropout.

    The global generator is reseeded too, so every choice sees the same dropout
    masks whatever ran before it (the choices once differed by up to 0.3 pt on the
    probe from that alone)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=HEAL_LR)
    student.train()
    for _step in range(steps):
        i = int(torch.randint(len(batches), (1,), generator=g))
        loss = F.mse_loss(student(batches[i]), teacher_targets[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    student.eval()


def evaluate(model: SentenceEncoder, data: dict[str, Any], tok: dict[str, Any], full: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    cos = []
    for name in TASKS:
        tr = embeddings(model, tok[name]["train"])
        te = embeddings(model, tok[name]["test"])
        cos.append(F.cosine_similarity(te, full[name]["test"], dim=-1))
        probe = linear_probe(tr, data[name][1], te, data[name][3])
        out[f"accuracy_{name}"] = probe.accuracy
        out[f"probe_c_{name}"] = probe.c
    out["cosine_to_full"] = float(torch.cat(cos).mean())
    return out


def main() -> None:
    timer = Timer()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    hf, tokenizer = load_minilm()
    full_model = SentenceEncoder(hf).eval()
    data = subsets()
    tok = {n: {"train": packed(tokenizer, data[n][0]), "test": packed(tokenizer, data[n][2])} for n in TASKS}
    full = {n: {k: embeddings(full_model, tok[n][k]) for k in ("train", "test")} for n in TASKS}
    base = evaluate(full_model, data, tok, full)
    heal_batches = [b for n in TASKS for b in tok[n]["train"]]
    targets = [full_model(b).detach() for b in heal_batches]
    calib = heal_batches[:: max(1, len(heal_batches) // 8)][:8]
    blocks = [f"encoder.encoder.layer.{i}" for i in range(len(full_model.encoder.encoder.layer))]

    choices: dict[str, dict[str, Any]] = {}
    for crit in CRITERIA:  # scoring only: the removal itself is one of the pairs below
        model = copy.deepcopy(full_model)
        rep = drop_layers_(model, {"k": 2, "criterion": crit, "blocks": BLOCKS, "seed": 0}, calibration=calib)
        pair = tuple(sorted(rep.meta["removed"], key=blocks.index))
        choices[crit] = {"removed": list(pair), "scores": rep.meta["scores"], "unhealed": evaluate(model, data, tok, full)}
        print(crit, pair, flush=True)

    pairs: dict[tuple[str, ...], dict[str, float]] = {}
    for pair in itertools.combinations(blocks, 2):
        model = copy.deepcopy(full_model)
        remove_from_container(model, list(pair))
        heal(model, targets, heal_batches)
        pairs[pair] = evaluate(model, data, tok, full)
        print("healed", [b.rsplit(".", 1)[-1] for b in pair], pairs[pair], timer.seconds, flush=True)

    def rank(pair: tuple[str, ...], key: str) -> int:
        """1 = best of the 15 pairs (ties share the better rank)."""
        return 1 + sum(v[key] > pairs[pair][key] for v in pairs.values())

    results: dict[str, dict[str, Any]] = {}
    for crit, c in choices.items():
        pair = tuple(c["removed"])
        results[crit] = {**c, **pairs[pair], "rank_of_15": {k: rank(pair, k) for k in METRICS}}
    expected = {k: statistics.mean(v[k] for v in pairs.values()) for k in METRICS}
    # binomial standard error of each test accuracy (the noise a single pair's figure carries)
    sizes = {n: len(data[n][3]) for n in TASKS}
    stderr = {f"accuracy_{n}": math.sqrt(expected[f"accuracy_{n}"] * (1 - expected[f"accuracy_{n}"]) / sizes[n]) for n in TASKS}

    tgt = {}
    for sim_name in SIMILARITY:
        sim = results[sim_name]
        for key in METRICS:
            for other in ("random", "last"):
                v, bar = sim[key], results[other][key]
                tgt[f"{sim_name}_{key}_vs_{other}"] = {"value": v, "bar": f">= {bar:.4f} ({other})", "met": v >= bar}
    write_result(
        "fold_redundant_minilm",
        metrics={**{("last2" if k == "last" else k): v for k, v in results.items()},
                 "every_pair": {"+".join(b.rsplit(".", 1)[-1] for b in p): v for p, v in pairs.items()},
                 "random_pair_expected": expected, "test_accuracy_stderr": stderr, "test_sentences": sizes,
                 "setting": f"{N_TRAIN} train sentences per task, every test sentence, max {MAX_LEN} tokens, "
                            f"heal {HEAL_STEPS} AdamW steps lr {HEAL_LR} (embedding MSE to the full model, seeded "
                            "batch order and dropout, the same for every pair)"},
        baseline=base, targets=tgt, wall_s=timer.seconds,
    )


if __name__ == "__main__":
    main()
