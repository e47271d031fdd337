"""prune_matrix: structured pruning of every architecture of the matrix, torchslim beside Torch-Pruning 1.6.1, one run.

Models: every entry of ``torchslim.testing.architectures.ARCHITECTURES`` (tiny random Hugging Face
BERT / BERT classifier / GPT-2 / Llama with grouped-query attention / ViT / Swin / GPT-J / SegFormer /
ResNet / ConvNeXt, a ViT on ``nn.MultiheadAttention``, concatenated grouped + depthwise branches with
squeeze-excite, GLU gates, tied weights, GRU/LSTM text models, a MobileNetV3 block, PyTorch's
``nn.TransformerEncoder`` and ``nn.Transformer`` (two inputs), a conv under ``weight_norm``, every zoo
model), each built fresh (seeded) for each side, with its own example input (a tensor, a pair of
tensors or a tokenizer's padded dict batch).

What each side is asked, at the same requested sparsity ``0.5``:

* **channels**: half of the channels of every prunable group (the same fraction in every group:
  torchslim ``scope: layer``; Torch-Pruning ``global_pruning=False``), widths not rounded
  (``round_to`` 1 / ``None``), the group fed by the first layer included (torchslim
  ``keep_first_last: false``), L2 magnitude ranking (torchslim ``criterion: l2``;
  Torch-Pruning ``MagnitudeImportance(p=2)``).
* **heads**: on attention with separate query/key/value projections (BERT/ViT ``query/key/value``,
  Llama and the zoo's ``q_proj/k_proj/v_proj``) half of the heads too: torchslim first
  ``granularity: head, sparsity: 0.5`` then the channel pass; Torch-Pruning as in its own Hugging Face
  examples (``examples/transformers/prune_hf_bert.py``, ``examples/LLMs/prune_llm.py``):
  ``num_heads`` on q/k/v (key/value heads for grouped-query attention), ``prune_num_heads=True``,
  ``prune_head_dims=False``, ``head_pruning_ratio=0.5``, and the attention modules' head counts
  (``num_attention_heads``/``attention_head_size``/``all_head_size``, ``num_key_value_groups``)
  updated after the step as those examples do. GPT-2's fused ``Conv1D`` ``c_attn`` gets heads from
  torchslim only (Torch-Pruning has no rule for ``Conv1D``). ``nn.MultiheadAttention`` gets no head
  pruning on either side: Torch-Pruning's rule for it shrinks the embedding width (every head keeps
  going, thinner), which is what torchslim's channel pass does there as well.
* **outputs kept**: the layers whose outputs reach the model's outputs without passing another
  Linear/Conv/Embedding/attention/RNN layer (the classifier, the LM head, the pooler, and, where the
  hidden state itself is an output as in ``BertModel``, every producer of the residual stream) are
  Torch-Pruning's ``ignored_layers``, found by walking the autograd graph back from the outputs;
  torchslim freezes the groups that reach the model output by itself. (TP's BERT example ignores only
  the pooler and so changes the width of ``last_hidden_state``; here both sides keep every output shape.)

Recorded per architecture and side: MACs and parameters before and after
(``torchslim.measure.count_macs`` for both sides, one sample of the same example input, attention
counted in full), whether the pruned model still runs on the example and keeps every output shape,
and a refusal, an exception (first line of its message and the frame that raised it) or a run past
60 s (Torch-Pruning's dependency search does not end on some graphs). Target: for every architecture
where both sides prune and return a model that runs with its output shapes, ``|ours / TP - 1| <= 0.10``
on MACs after pruning; every other architecture is listed with each side's refusal. Where the two sides
differ by more than that, each side's output width of every layer (before -> after) is recorded too.

Diagnostic (``tp_on_our_groups``, not the target): Torch-Pruning again with every leaf layer whose
output width torchslim left whole added to ``ignored_layers``: the same groups pruned on both sides,
so a gap that closes there comes from the groups torchslim froze, and one that stays from how a group
is cut. ``--only NAME ...`` runs a subset and prints it (the results file is written by full runs only).
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, write_result

from torchslim.errors import TransformRefusedError
from torchslim.graph.attention import attention_specs
from torchslim.measure import count_macs
from torchslim.measure.macs import call_model
from torchslim.prune.structured import prune_structured_
from torchslim.testing.architectures import ARCHITECTURES

SPARSITY = 0.5
TOLERANCE = 0.10
SEED = 0
OURS_HEADS = {"granularity": "head", "sparsity": SPARSITY}
OURS_CHANNELS = {"granularity": "channel", "sparsity": SPARSITY, "scope": "layer", "round_to": 1,
                 "keep_first_last": False, "criterion": "l2"}
TIME_LIMIT_S = 60  # per side and architecture: Torch-Pruning's dependency search can run without end
LEAVES = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.MultiheadAttention, nn.RNNBase)


def tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model output (tensor, tuple/list, dict or ``ModelOutput``), in order; caches and the like are left out."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        values: Any = out.values()
    elif isinstance(out, (tuple, list)):
        values = out
    else:
        return []
    return [t for v in values for t in tensors(v)]


def is_leaf(module: nn.Module) -> bool:
    """A layer with weights of its own that a pruner cuts: Linear, conv, Embedding, attention, RNN, HF ``Conv1D``."""
    return isinstance(module, LEAVES) or type(module).__name__ == "Conv1D"


def output_producers(model: nn.Module, x: Any) -> list[nn.Module]:
    """The leaf layers whose outputs reach the model's outputs with no other leaf layer in between (autograd walk)."""
    made: dict[Any, nn.Module] = {}

    def hook(module: nn.Module, _inputs: Any, out: Any) -> None:
        ts = tensors(out)
        if ts and ts[0].grad_fn is not None:
            made[ts[0].grad_fn] = module

    handles = [m.register_forward_hook(hook) for m in model.modules() if is_leaf(m)]
    try:
        with torch.enable_grad():
            out = call_model(model, x)
    finally:
        for h in handles:
            h.remove()
    found: list[nn.Module] = []
    seen: set[Any] = set()
    stack = [t.grad_fn for t in tensors(out) if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made:
            if all(made[fn] is not m for m in found):
                found.append(made[fn])
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return found


def heads_asked(model: nn.Module) -> bool:
    """Heads are pruned (both sides) where the model has attention other than ``nn.MultiheadAttention``."""
    return any(s.kind != "mha" and not isinstance(model.get_submodule(s.name), nn.MultiheadAttention)
               for s in attention_specs(model))


def tp_head_layout(model: nn.Module) -> dict[nn.Module, int]:
    """Torch-Pruning's ``num_heads``: q/k/v Linears of BERT/ViT-style and q_proj/k_proj/v_proj attention."""
    num_heads: dict[nn.Module, int] = {}
    for m in model.modules():
        if all(isinstance(getattr(m, p, None), nn.Linear) for p in ("query", "key", "value")) and hasattr(m, "num_attention_heads"):
            for p in ("query", "key", "value"):
                num_heads[getattr(m, p)] = int(m.num_attention_heads)
        elif all(isinstance(getattr(m, p, None), nn.Linear) for p in ("q_proj", "k_proj", "v_proj")) and isinstance(getattr(m, "head_dim", None), int):
            hd = m.head_dim
            num_heads[m.q_proj] = m.q_proj.out_features // hd
            num_heads[m.k_proj] = m.k_proj.out_features // hd
            num_heads[m.v_proj] = m.v_proj.out_features // hd
    return num_heads


def tp_fix_attention(model: nn.Module, pruner: Any) -> None:
    """After the step, the head counts the attention modules read, as Torch-Pruning's HF examples set them."""
    for m in model.modules():
        if all(isinstance(getattr(m, p, None), nn.Linear) for p in ("query", "key", "value")) and hasattr(m, "num_attention_heads"):
            m.num_attention_heads = pruner.num_heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features
        elif hasattr(m, "num_key_value_groups") and isinstance(getattr(m, "q_proj", None), nn.Linear):
            m.num_key_value_groups = pruner.num_heads[m.q_proj] // pruner.num_heads[m.k_proj]


def out_width(module: nn.Module) -> int | None:
    """The output width a channel pruner cuts: features, channels, embedding or hidden size."""
    for attr in ("out_features", "out_channels", "embedding_dim", "embed_dim", "hidden_size", "nf"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def leaf_widths(model: nn.Module) -> dict[str, int | None]:
    return {name: out_width(m) for name, m in model.named_modules() if is_leaf(m)}


def prune_torch_pruning(model: nn.Module, x: Any, keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Torch-Pruning 1.6.1's MetaPruner at ``SPARSITY`` (see the module docstring); the leaf layers named in
    ``keep`` are added to ``ignored_layers`` (the diagnostic run on torchslim's groups)."""
    import torch_pruning as tp

    num_heads = tp_head_layout(model) if heads_asked(model) else {}
    ignored = output_producers(model, x)
    ignored += [m for n, m in model.named_modules() if n in keep and all(m is not i for i in ignored)]
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=False, pruning_ratio=SPARSITY,
        ignored_layers=ignored, round_to=None, num_heads=num_heads, prune_num_heads=bool(num_heads),
        prune_head_dims=not num_heads, head_pruning_ratio=SPARSITY if num_heads else 0.0,
        output_transform=lambda out: sum(t.float().sum() for t in tensors(out)),
    )
    pruner.step()
    tp_fix_attention(model, pruner)
    return {"ignored_layers": sorted(n for n, m in model.named_modules() if any(m is i for i in ignored)),
            "heads": bool(num_heads)}


def prune_torchslim(model: nn.Module, x: Any) -> dict[str, Any]:
    """torchslim: heads (where asked), then channels, at ``SPARSITY`` (see the module docstring)."""
    heads = heads_asked(model)
    reports = [prune_structured_(model, OURS_HEADS, example_input=x)] if heads else []
    reports.append(prune_structured_(model, OURS_CHANNELS, example_input=x))
    frozen = {f"{s.name}: {s.reason}" for r in reports for s in r.skipped if "frozen" in s.reason}
    return {"heads": heads, "frozen": sorted(frozen)}  # the groups left whole, with why


class TimeLimit(Exception):
    """A side ran past :data:`TIME_LIMIT_S`; ``where`` is the innermost frame it was in."""

    def __init__(self, seconds: int, where: str) -> None:
        super().__init__(f"did not finish in {seconds} s")
        self.where = where


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`TimeLimit` in the main thread after ``seconds`` (SIGALRM; Unix)."""

    def expire(_signum: int, frame: Any) -> None:
        stack = traceback.extract_stack(frame)
        raise TimeLimit(seconds, " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack[::-1][:4]))

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def run_side(name: str, prune: Callable[[nn.Module, Any], dict[str, Any]]) -> dict[str, Any]:
    """Build ``name`` fresh, prune it with ``prune``, measure it; a refusal or an exception is written down."""
    arch = ARCHITECTURES[name]()
    model, x = arch.model, arch.example
    with torch.no_grad():
        shapes0 = [tuple(t.shape) for t in tensors(call_model(model, x))]
    row: dict[str, Any] = {"macs_before": count_macs(model, x), "params_before": sum(p.numel() for p in model.parameters())}
    try:
        with warnings.catch_warnings(), time_limit(TIME_LIMIT_S):
            warnings.simplefilter("ignore")
            row.update(prune(model, x))
    except TimeLimit as exc:
        return {**row, "status": "timeout", "message": str(exc), "where": exc.where}
    except TransformRefusedError as exc:
        return {**row, "status": "refused", "message": first_line(exc)}
    except Exception as exc:  # noqa: BLE001 - a peer's crash is a result too
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        return {**row, "status": "error", "message": first_line(exc), "where": f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} {frame.name}"}
    try:
        with torch.no_grad():
            shapes1 = [tuple(t.shape) for t in tensors(call_model(model, x))]
    except Exception as exc:  # noqa: BLE001
        return {**row, "status": "broken", "message": f"pruned model fails: {first_line(exc)}"}
    row.update(macs_after=count_macs(model, x), params_after=sum(p.numel() for p in model.parameters()), widths=leaf_widths(model))
    row["macs_ratio"] = round(row["macs_after"] / row["macs_before"], 4)
    if shapes1 != shapes0:
        return {**row, "status": "broken", "message": f"output shapes changed: {shapes0} -> {shapes1}"}
    row["status"] = "pruned" if row["macs_after"] < row["macs_before"] else "unchanged"
    return row


def run_architecture(name: str) -> dict[str, Any]:
    """Both sides on ``name``, then the diagnostic: Torch-Pruning with every leaf layer torchslim left at its
    width also ignored (the same groups pruned on both sides: any remaining gap is in how a group is cut)."""
    ours = run_side(name, prune_torchslim)
    tp = run_side(name, prune_torch_pruning)
    row = {"torchslim": ours, "torch_pruning": tp, "ours_over_tp": compare(ours, tp), "tp_on_our_groups": {}}
    before = leaf_widths(ARCHITECTURES[name]().model)
    if ours["status"] == "pruned":
        keep = frozenset(n for n, w in ours["widths"].items() if w == before.get(n))
        row["tp_on_our_groups"] = same = run_side(name, lambda m, x: prune_torch_pruning(m, x, keep))
        same["kept_by_torchslim"] = sorted(keep)
        row["ours_over_tp_on_our_groups"] = compare(ours, same)
    outside = row["ours_over_tp"] is not None and abs(row["ours_over_tp"] - 1) > TOLERANCE
    for side in (ours, tp, row["tp_on_our_groups"]):
        widths = side.pop("widths", None)  # kept where the sides differ by more than the tolerance: where, layer by layer
        if outside and widths is not None and side is not row["tp_on_our_groups"]:
            side["output_widths"] = {n: f"{before.get(n)} -> {w}" for n, w in widths.items()}
    return row


def compare(ours: dict[str, Any], tp: dict[str, Any]) -> float | None:
    """``ours / TP`` MACs after, where both pruned and kept a working model."""
    if ours["status"] == tp["status"] == "pruned":
        return round(ours["macs_after"] / tp["macs_after"], 4)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="architecture names (default: all)")
    args = parser.parse_args()
    timer = Timer()
    torch.manual_seed(SEED)
    names = args.only or list(ARCHITECTURES)
    rows: dict[str, Any] = {}
    for name in names:
        rows[name] = row = run_architecture(name)
        print(f"{name:20s} ours {row['torchslim']['status']:8s} {row['torchslim'].get('macs_ratio', '-')!s:7s} "
              f"tp {row['torch_pruning']['status']:9s} {row['torch_pruning'].get('macs_ratio', '-')!s:7s} "
              f"ours/tp {row['ours_over_tp']!s:7s} tp-on-our-groups {row['tp_on_our_groups'].get('macs_ratio', '-')}", flush=True)
    if args.only is None:  # a subset is printed, never written over the full results
        write(rows, names, timer)


def write(rows: dict[str, Any], names: list[str], timer: Timer) -> None:
    both = {n: r["ours_over_tp"] for n, r in rows.items() if r["ours_over_tp"] is not None}
    off = {n: v for n, v in both.items() if abs(v - 1) > TOLERANCE}
    refusals = {side: {n: f"{r[side]['status']}: {r[side].get('message', '')}" for n, r in rows.items()
                       if r[side]["status"] not in ("pruned",)} for side in ("torchslim", "torch_pruning")}
    table = {n: {"ours_macs_ratio": r["torchslim"].get("macs_ratio"), "tp_macs_ratio": r["torch_pruning"].get("macs_ratio"),
                 "ours_over_tp": r["ours_over_tp"], "ours": r["torchslim"]["status"], "tp": r["torch_pruning"]["status"],
                 "tp_on_our_groups_macs_ratio": r["tp_on_our_groups"].get("macs_ratio"),
                 "ours_over_tp_on_our_groups": r.get("ours_over_tp_on_our_groups")}
             for n, r in rows.items()}
    worst = max((abs(v - 1) for v in both.values()), default=None)
    metrics = {"sparsity": SPARSITY, "architectures": names, "table": table, "both_run": sorted(both),
               "outside_tolerance": off, "refusals": refusals, "rows": rows,
               "config": {"torchslim_heads": OURS_HEADS, "torchslim_channels": OURS_CHANNELS}}
    peers = {"torch_pruning": {"version": _tp_version(), "importance": "MagnitudeImportance(p=2)",
                               "pruning_ratio": SPARSITY, "head_pruning_ratio": SPARSITY, "round_to": None,
                               "macs_ratio": {n: r["torch_pruning"].get("macs_ratio") for n, r in rows.items()}}}
    targets = {"macs_within_10pct_of_torch_pruning": {
        "value": None if worst is None else round(worst, 4), "bar": TOLERANCE,
        "met": bool(both) and not off, "outside": sorted(off)}}
    path = write_result("prune_matrix", metrics=metrics, peers=peers, targets=targets,
                        seed=SEED, wall_s=timer.seconds,
                        notes="MACs only (torchslim.measure.count_macs, one sample), no timing; CPU")
    print(path)


def _tp_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")


if __name__ == "__main__":
    main()
