"""The training side: the epoch loop (`Trainer`), updaters, extensions, meters and schedules."""

from fbprop.train.extensions import (
    BestParams,
    Callback,
    Checkpoint,
    DistortionSamples,
    Extension,
    LogLine,
    MetricsFiles,
    Plots,
    ProgressBar,
)
from fbprop.train.loop import Trainer
from fbprop.train.meters import Meter, evaluate
from fbprop.train.schedules import LENET_FACTORS, SCHEDULES, schedule_factor
from fbprop.train.updaters import UPDATERS, FullBatch, LBFGSUpdater, MiniBatch, TrainingDiverged, Updater

__all__ = ["BestParams", "Callback", "Checkpoint", "DistortionSamples", "evaluate", "Extension", "FullBatch",
           "LBFGSUpdater", "LENET_FACTORS", "LogLine", "Meter", "MetricsFiles", "MiniBatch", "Plots", "ProgressBar",
           "schedule_factor", "SCHEDULES", "Trainer", "TrainingDiverged", "Updater", "UPDATERS"]
