"""The stages, in dependency order. A new stage is one module here plus one workflow rule.

`STAGES` maps a stage's name (its CLI verb, plan job stage and Snakemake rule) to the stage.
"""

from prunebench.stages.base import Stage
from prunebench.stages.benchmark import BenchmarkStage
from prunebench.stages.lottery import LotteryStage
from prunebench.stages.prune import PruneStage
from prunebench.stages.recover import DISTILL, FINETUNE
from prunebench.stages.rewind import REWIND_STAGE
from prunebench.stages.sensitivity import SensitivityStage
from prunebench.stages.train import TrainStage

_MAKING = (TrainStage(), SensitivityStage(), PruneStage(), FINETUNE, DISTILL, REWIND_STAGE,
           LotteryStage())
STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (*_MAKING, BenchmarkStage(measures=[s for s in _MAKING if s.result]))
}

__all__ = ["STAGES", "Stage"]
