"""The ``share`` and ``encode`` recipe stages (Deep Compression's last two steps).

YAML::

    stages:
      - {type: train, epochs: 10, lr: 0.1}
      - {type: prune, sparsity: 0.92, schedule: iterative, rounds: 3, finetune: {epochs: 2, lr: 0.01}}
      - type: share                       # k-means weight sharing, centroids fine-tuned
        bits: 5
        targets: {"re:conv.*": {bits: 8}}
        finetune: {epochs: 3, lr: 0.002}
      - {type: encode, file: model.tslim}  # Huffman coding into the .tslim file

The ``encode`` stage writes the file into the run directory; its size on disk
is the run's ``bytes_file`` figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from torchslim.config import Config
from torchslim.encode.container import TslimFormatError, save
from torchslim.encode.kmeans import ShareConfig, share_weights_
from torchslim.measure import dense_bytes
from torchslim.report import Report
from torchslim.stages import STAGES, StageContext, StageSpec
from torchslim.train.loop import TrainConfig, finetune


class ShareStage(ShareConfig):
    """``share_weights_`` then, optionally, fine-tuning of the centroids."""

    name: str | None = None
    finetune: TrainConfig | None = None


class EncodeStage(Config):
    """Write the model as a ``.tslim`` file.

    Attributes:
        file: file name inside the run directory.
        coding: ``huffman`` (Deep Compression) or ``fixed`` (fixed-width indices).
    """

    name: str | None = None
    file: str = Field(default="model.tslim", min_length=1)
    coding: Literal["huffman", "fixed"] = "huffman"

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if Path(v).name != v or v in (".", ".."):
            raise ValueError("must be a plain file name (it is written inside the run directory)")
        return v


def _run_share(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if not isinstance(cfg, ShareStage):
        raise TypeError(f"expected a ShareStage config, got {type(cfg).__name__}")
    report = share_weights_(model, cfg.model_dump(exclude={"name", "finetune"}))
    if cfg.finetune is not None:
        trained = finetune(model, ctx.data, cfg.finetune, progress=ctx.progress, description=ctx.label)
        report.meta["finetune"] = trained.meta.get("history")
    return report


def _run_encode(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if not isinstance(cfg, EncodeStage):
        raise TypeError(f"expected an EncodeStage config, got {type(cfg).__name__}")
    if ctx.output is None:
        raise TslimFormatError("the encode stage needs a run directory to write into")
    path = save(model, ctx.output / cfg.file, arch=ctx.arch, coding=cfg.coding)
    size = path.stat().st_size
    dense = dense_bytes(model)
    return Report(
        title="encode",
        technique="encode",
        meta={"file": cfg.file, "file_bytes": size, "coding": cfg.coding, "ratio_vs_dense": dense / size if size else None},
    )


STAGES.register("share")(
    StageSpec(
        ShareStage,
        _run_share,
        help="k-means weight sharing per layer (bits, init linear/density/random), optional centroid fine-tuning",
    )
)
STAGES.register("encode")(
    StageSpec(EncodeStage, _run_encode, help="write the model as a .tslim file (Huffman-coded); its size is bytes_file")
)
