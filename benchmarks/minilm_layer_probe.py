"""minilm_layer_probe: downstream probe accuracy of the full MiniLM's output after each layer.

A diagnostic for ``fold_redundant_minilm`` (no targets): the same fixed subsets,
tokens (64 max) and probe (``torchslim.measure.linear_probe``), applied to the
mean-pooled hidden states of the unmodified model after its embedding layer
(0) and after each of its six transformer layers (6 = the model's own
embedding). If an intermediate layer already scores higher than the final
output, a model cut after that layer (``last-k`` removal) scores higher on the
probe than the full model, and a removal criterion that stays faithful to the
full model's output cannot win on downstream accuracy.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/minilm_layer_probe.py`` (~2 min).
"""

from __future__ import annotations

import torch
from _common import Timer, write_result
from fold_redundant_minilm import MAX_LEN, N_TRAIN, TASKS, packed, subsets

from torchslim.measure import linear_probe
from torchslim.zoo.minilm import load_minilm, mean_pool


@torch.no_grad()
def layer_embeddings(hf: torch.nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    """(layers + 1, N, hidden): mean-pooled hidden states after the embeddings and after each layer."""
    outs = []
    for b in batches:
        ids, mask = b[:, 0], b[:, 1]
        states = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        outs.append(torch.stack([mean_pool(h, mask) for h in states]))
    return torch.cat(outs, dim=1)


def main() -> None:
    timer = Timer()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    hf, tokenizer = load_minilm()
    hf.eval()
    data = subsets()
    metrics: dict[str, dict[str, float]] = {}
    for name in TASKS:
        tr_txt, tr_y, te_txt, te_y = data[name]
        tr = layer_embeddings(hf, packed(tokenizer, tr_txt))
        te = layer_embeddings(hf, packed(tokenizer, te_txt))
        metrics[name] = {}
        for layer in range(tr.shape[0]):
            r = linear_probe(tr[layer], tr_y, te[layer], te_y)
            metrics[name][f"after_layer_{layer}"] = r.accuracy
            print(name, layer, round(r.accuracy, 4), f"C={r.c:g}", flush=True)
        best = max(metrics[name], key=metrics[name].get)
        metrics[name]["best"] = best
        metrics[name]["final_minus_best_pt"] = 100 * (metrics[name][f"after_layer_{tr.shape[0] - 1}"] - metrics[name][best])
    write_result(
        "minilm_layer_probe",
        metrics=metrics,
        wall_s=timer.seconds,
        notes=(f"Full all-MiniLM-L6-v2, mean-pooled hidden states after the embeddings (0) and each layer (1-6); "
               f"{N_TRAIN} train sentences per task, every test sentence, max {MAX_LEN} tokens (the subsets of "
               "fold_redundant_minilm); probe: torchslim.measure.linear_probe. Diagnostic, no targets."),
    )


if __name__ == "__main__":
    main()
