"""The config of :func:`torchslim.search.search`: the budget, the objective, the space and how long to look.

Example:
    >>> cfg = SearchConfig.parse({"budget": 1.0, "objective": "latency", "trials": 12})
    >>> cfg.space_families()
    ['structured', 'blocks', 'lowrank', 'int8', 'fold', 'heal']
    >>> SearchConfig.parse({"objective": "size"})
    Traceback (most recent call last):
        ...
    torchslim.errors.ConfigError: 1 error(s) in config
      - objective: Input should be 'bytes', 'macs' or 'latency' (got 'size')
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from torchslim.config import Config
from torchslim.search.config import SensitivityConfig

__all__ = ["FAMILIES", "HealConfig", "LatencyConfig", "SearchConfig"]

Objective = Literal["bytes", "macs", "latency"]
Family = Literal["structured", "blocks", "unstructured", "bits", "share", "lowrank", "int8", "fold", "heal"]

#: every family of the space, in the order a plan's stages run
FAMILIES: tuple[str, ...] = ("structured", "blocks", "lowrank", "unstructured", "heal", "fold", "bits", "share", "int8")

#: which families move each objective (the default space); ``heal`` and ``fold`` are global switches
_FOR_OBJECTIVE: dict[str, tuple[str, ...]] = {
    "bytes": ("structured", "blocks", "lowrank", "unstructured", "bits", "share", "heal"),
    "macs": ("structured", "blocks", "lowrank", "fold", "heal"),
    "latency": ("structured", "blocks", "lowrank", "int8", "fold", "heal"),
}


class HealConfig(Config):
    """The short healing every candidate gets after its structural changes (a fine-tune or a distillation).

    Attributes:
        epochs: the epoch counts the search may choose from (``0``: no healing).
        max_steps: at most this many optimizer steps per healing (a short heal; ``None``: whole epochs).
        methods: ``finetune`` (labels only) and/or ``distill`` (from the model before compression).
        lr: the peak learning rate (cosine schedule).
        optimizer: ``sgd`` (Nesterov momentum, weight decay 5e-4: what convolutional nets heal with) or
            ``adamw`` (weight decay 0.01: what transformers fine-tune with; give it a small ``lr``, e.g. 5e-5).
        batch_size: samples per step.
        qat: let the search choose quantization-aware training (one healing pass with the quantizers in place).
        centroid_lr: the peak learning rate of the healing after weight sharing (``share``): each
            centroid moves by the sum of its members' gradients (Deep Compression's update), so
            it wants a smaller rate than the weights' healing.
    """

    epochs: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, max_length=8)
    max_steps: int | None = Field(default=200, ge=1, le=10_000_000)
    methods: list[Literal["finetune", "distill"]] = Field(
        default_factory=lambda: ["finetune", "distill"], min_length=1  # type: ignore[arg-type]
    )
    lr: float = Field(default=0.01, gt=0.0, le=10.0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    batch_size: int = Field(default=128, ge=1, le=65_536)
    qat: bool = False
    centroid_lr: float = Field(default=1e-3, gt=0.0, le=10.0)

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: list[int]) -> list[int]:
        bad = [e for e in v if not 0 <= e <= 1000]
        if bad:
            raise ValueError(f"every epoch count must be in [0, 1000], got {bad}")
        return sorted(set(v))


class LatencyConfig(Config):
    """Where the latency objective is measured: ONNX Runtime on this machine's CPU.

    Attributes:
        batch: samples per timed call.
        threads: ONNX Runtime intra-op threads.
        runs: timed calls (the median is the figure).
    """

    batch: int = Field(default=32, ge=1, le=4096)
    threads: int = Field(default=2, ge=1, le=256)
    runs: int = Field(default=20, ge=3, le=10_000)


class SearchConfig(Config):
    """What :func:`~torchslim.search.search` looks for.

    Attributes:
        budget: the largest accuracy drop accepted on the validation split, in points.
        objective: minimise ``bytes`` (the ``.tslim`` file), ``macs`` or ``latency`` (the ONNX
            file in ONNX Runtime, as ``latency`` says).
        families: the families the search may combine (default: those that move the objective).
        trials: scored trials of the refinement stage (the study's budget, across workers and restarts); a
            plan pruned before its healing (``max_one_shot_drop``) does not count, and the study also
            stops after three times ``trials`` of those.
        time: stop starting trials after this many seconds (``None``: only ``trials`` stops it).
        workers: worker processes sharing the study (each with ``threads`` torch threads).
        threads: torch threads per worker (``None``: torch's default with one worker, 1 with more).
        storage: the Optuna storage URL (``sqlite:///path.db``, ``postgresql://...``); default a
            SQLite file ``study.db`` in the output directory. A search restarted on the same storage
            and study continues: finished trials are not run again.
        study: the study's name in the storage.
        sampler: ``tpe`` (multi-objective TPE with the budget as a constraint) or ``nsga2``.
        proposals: plans the fast stage (sensitivity knapsack) proposes; they are the study's
            first trials.
        proposals_from: ``sensitivity`` (one-shot losses predicted from the analysis) or ``singles``
            (each family alone is searched first; the proposals combine the best families at fractions
            of their measured, healed limits; needs ``singles``).
        singles: also search each family alone (a 1-D search at the same budget and healing), to
            say what each family achieves alone and what the combination adds.
        refine_trials: the last this many of ``trials`` refine the best plan within the budget (when
            it leaves part of the budget unspent): the plans one grid step stronger in each of its active
            families, then those of any better plan they find (a pattern search). ``None``: a third of
            ``trials``; ``0``: the sampler alone.
        val_samples: validation samples each candidate is scored on (the test split is used only
            by the final report).
        max_one_shot_drop: a candidate whose drop before healing exceeds this (points) stops early
            (measured after re-estimating BatchNorm statistics on four training batches).
        seed: the seed of the sampler and of every candidate's stages.
        heal: see :class:`HealConfig`.
        latency: see :class:`LatencyConfig`.
        channel_multiple: channel pruning keeps widths that are multiples of this (``round_to``). With the
            ``latency`` objective it is also the narrowest width a group keeps, since narrower runs slower:
            ONNX Runtime's int8 convolutions work in blocks of 16 output channels (measured here, 2 threads,
            batch 32: a 3x3 int8 convolution at 28x28 took 1.19 ms with 8 or 12 output channels and 1.04 ms
            with 16; in ResNet-20, pruning its 16-channel convolutions to 8 doubled their time). ``None``:
            16 for ``latency``, 8 otherwise.
        min_ratio: also require the objective to be at least this many times smaller than the
            unchanged model's (a plan short of it misses by the factor it lacks).
        heartbeat: seconds between a worker's heartbeats; a trial whose worker has been silent for
            three of them is marked failed (and run again once) when a worker next starts a trial.
        replay: run the chosen plan's recipe with ``torchslim run`` at the end (its report is the
            one measured on the test split).
        sensitivity: the analysis the fast stage reads (a :class:`SensitivityConfig`); or
            ``sensitivity_file``: a saved result to reuse.
    """

    budget: float = Field(default=1.0, ge=0.0, le=100.0)
    objective: Objective = "bytes"
    families: list[Family] | None = None
    trials: int = Field(default=24, ge=1, le=100_000)
    time: float | None = Field(default=None, gt=0.0, le=1e7)
    workers: int = Field(default=1, ge=1, le=256)
    threads: int | None = Field(default=None, ge=1, le=256)
    storage: str | None = Field(default=None, min_length=1, max_length=4096)
    study: str = Field(default="torchslim-search", min_length=1, max_length=200)
    sampler: Literal["tpe", "nsga2"] = "tpe"
    proposals: int = Field(default=6, ge=0, le=100)
    proposals_from: Literal["sensitivity", "singles"] = "sensitivity"
    singles: bool = True
    refine_trials: int | None = Field(default=None, ge=0, le=100_000)
    val_samples: int = Field(default=2000, ge=1, le=10_000_000)
    max_one_shot_drop: float = Field(default=60.0, gt=0.0, le=100.0)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    heal: HealConfig = Field(default_factory=HealConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    sensitivity: SensitivityConfig = Field(
        default_factory=lambda: SensitivityConfig(metric="accuracy", batches=4, batch_size=256)
    )
    sensitivity_file: str | None = Field(default=None, min_length=1, max_length=4096)
    channel_multiple: int | None = Field(default=None, ge=1, le=1024)
    min_ratio: float | None = Field(default=None, gt=1.0, le=1e6)
    heartbeat: int = Field(default=10, ge=1, le=3600)
    replay: bool = True

    @field_validator("families")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"each family at most once, got {v}")
        return v

    @model_validator(mode="after")
    def _families_fit(self) -> SearchConfig:
        fams = set(self.space_families())
        if self.objective == "latency" and fams & {"bits", "share"}:
            raise ValueError(
                "families: 'bits' and 'share' (weight-only) do not make ONNX Runtime faster; use 'int8' for latency"
            )
        if self.proposals_from == "singles" and not self.singles:
            raise ValueError("proposals_from: 'singles' needs singles: true (the families alone are what it combines)")
        if not fams - {"heal", "fold"}:
            raise ValueError(f"families: nothing that compresses; allowed: {list(FAMILIES)}")
        return self

    def refine_count(self) -> int:
        """How many of the last ``trials`` refine the best plan (see ``refine_trials``)."""
        return min(self.trials, self.trials // 3 if self.refine_trials is None else self.refine_trials)

    def channel_widths(self) -> dict[str, int]:
        """The channel stage's ``round_to`` and ``min_channels`` (see ``channel_multiple``).

        Example:
            >>> SearchConfig.parse({"objective": "latency"}).channel_widths()
            {'round_to': 16, 'min_channels': 16}
            >>> SearchConfig.parse({"objective": "bytes"}).channel_widths()
            {'round_to': 8, 'min_channels': 1}
        """
        latency = self.objective == "latency"
        multiple = self.channel_multiple or (16 if latency else 8)
        return {"round_to": multiple, "min_channels": multiple if latency else 1}

    def space_families(self) -> list[str]:
        """The families searched, in the order a plan's stages run them."""
        chosen = self.families if self.families is not None else _FOR_OBJECTIVE[self.objective]
        order = ("structured", "blocks", "lowrank", "unstructured", "bits", "share", "int8", "fold", "heal")
        return [f for f in order if f in chosen]
