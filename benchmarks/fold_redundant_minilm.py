"""fold_redundant_minilm: drop 2 of MiniLM's 6 layers chosen by similarity vs random vs last-2, healed equally.

For each choice (two similarity criteria on calibration sentences: ShortGPT block
influence, i.e. each layer's input/output cosine, and output similarity, i.e. the
final embedding's cosine to the full model's with layers skipped, chosen greedily;
then seeded random and the last two) the 4-layer encoder is healed the same way: ``HEAL_STEPS`` steps of
embedding distillation towards the full model (MSE of mean-pooled embeddings) on
unlabeled training sentences of both tasks. Figures: mean cosine of the
embeddings to the full model's on the test sentences, and downstream accuracy of
a logistic-regression probe (trained on the model's own train embeddings) on SMS
spam and RT sentence polarity, on fixed seeded subsets. The probe is
``torchslim.measure.linear_probe``, the one every MiniLM benchmark uses: embeddings
L2-normalised and standardised, the penalty chosen by 5-fold cross-validation
on the train split (a fixed penalty, C=1 here before, favours whichever
embedding geometry happens to suit it).

Target: the similarity choice ≥ both random and last-2 on cosine and on downstream
accuracy; written for each of the two similarity criteria. Every test sentence of
both tasks is used (the probe's accuracy on a few hundred sentences is too noisy to
rank the choices).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch
import torch.nn.functional as F

from _common import Timer, write_result
from torchslim.data.text import load_text
from torchslim.fold.redundant import drop_layers_
from torchslim.measure import linear_probe
from torchslim.zoo.minilm import SentenceEncoder, load_minilm, pack_tokens, tokenize

N_TRAIN, N_TEST, MAX_LEN, BATCH = 1000, 1_000_000, 64, 32
HEAL_STEPS, HEAL_LR = 150, 5e-5
TASKS = ("sms-spam", "rt-polarity")


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


def probe_accuracy(train_e: torch.Tensor, train_y: list[int], test_e: torch.Tensor, test_y: list[int]) -> float:
    """Logistic-regression probe, penalty chosen by 5-fold CV on the train split (``torchslim.measure.linear_probe``)."""
    return linear_probe(train_e, train_y, test_e, test_y).accuracy


def heal(student: SentenceEncoder, teacher_targets: list[torch.Tensor], batches: list[torch.Tensor], seed: int = 0,
         steps: int = HEAL_STEPS) -> None:
    """Embedding distillation: MSE between student and full-model embeddings, fixed steps and order."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=HEAL_LR)
    student.train()
    for step in range(steps):
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
        out[f"accuracy_{name}"] = probe_accuracy(tr, data[name][1], te, data[name][3])
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
    results: dict[str, dict[str, Any]] = {}
    for crit in ("block_influence", "output_similarity", "random", "last"):
        model = copy.deepcopy(full_model)
        rep = drop_layers_(model, {"k": 2, "criterion": crit, "blocks": r"encoder\.encoder\.layer\.\d+", "seed": 0},
                           calibration=calib)
        before_heal = evaluate(model, data, tok, full)
        heal(model, targets, heal_batches)
        after = evaluate(model, data, tok, full)
        results[crit] = {"removed": rep.meta["removed"], "scores": rep.meta["scores"],
                         "unhealed": before_heal, **after}
        print(crit, rep.meta["removed"], after, flush=True)
    tgt = {}
    for sim_name in ("block_influence", "output_similarity"):
        sim = results[sim_name]
        for key in ("cosine_to_full", *(f"accuracy_{n}" for n in TASKS)):
            for other in ("random", "last"):
                v, bar = sim[key], results[other][key]
                tgt[f"{sim_name}_{key}_vs_{other}"] = {"value": v, "bar": f">= {bar:.4f} ({other})", "met": v >= bar}
    write_result(
        "fold_redundant_minilm",
        metrics={"block_influence": results["block_influence"], "output_similarity": results["output_similarity"],
                 "random": results["random"], "last2": results["last"],
                 "setting": f"{N_TRAIN} train sentences per task, every test sentence, max {MAX_LEN} tokens, "
                            f"heal {HEAL_STEPS} AdamW steps lr {HEAL_LR} (embedding MSE to the full model)"},
        baseline=base, targets=tgt, wall_s=timer.seconds,
    )


if __name__ == "__main__":
    main()
