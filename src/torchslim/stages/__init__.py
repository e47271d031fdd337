"""Recipe stages: :mod:`~torchslim.stages.base` (the spec, the context, the registry; imports no
technique) and :mod:`~torchslim.stages.catalog` (the one explicit list of stage types)."""

from torchslim.stages.base import (
    STAGES,
    StageContext,
    StageResult,
    StageRunner,
    StageSpec,
    as_result,
    run_stage,
    technique_stage,
)
from torchslim.stages.catalog import CATALOG, DistillStage, EncodeStage, QuantizeStage, TeacherSpec, build_teacher

__all__ = [
    "CATALOG",
    "STAGES",
    "DistillStage",
    "EncodeStage",
    "QuantizeStage",
    "StageContext",
    "StageResult",
    "StageRunner",
    "StageSpec",
    "TeacherSpec",
    "as_result",
    "build_teacher",
    "run_stage",
    "technique_stage",
]
