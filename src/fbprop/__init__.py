"""fbprop: gradient-based learning in multi-module systems (fprop, bprop, bbprop)."""

from fbprop import data  # noqa: E402  (the subpackage, as fb.data)
from fbprop.gradcheck import GradcheckError, GradcheckReport, gradcheck
from fbprop.inference import minimize_energy
from fbprop.lenet import LENET5_BITMAPS, lenet5, lenet5_codes, lenet5_energy, lenet_modern
from fbprop.losses import (
    L1,
    L2,
    LOSSES,
    ContrastiveLoss,
    EnergyLoss,
    HingeLoss,
    LogLoss,
    Loss,
    LVQ2Loss,
    MCELoss,
    NLLLoss,
    PerceptronLoss,
    Regularizer,
    SquareExpLoss,
    SquareSquareLoss,
    infer,
)
from fbprop.machine import Machine
from fbprop.models import build_machine, mlp, nn_2layer, nn_layer
from fbprop.module import Cascade, Module
from fbprop.modules.conv import LENET5_C3_TABLE, Conv2d, MaxPool, Subsampling
from fbprop.modules.distance import RBF, Euclidean, NegatedScores, onehot_codes, random_codes
from fbprop.modules.dropout import Dropout
from fbprop.modules.join import (
    Concat,
    Copy,
    CosineSimilarity,
    Distance,
    Product,
    Scale,
    Split,
    SquaredDistance,
    Sum,
    Zeros,
)
from fbprop.modules.linear import Linear
from fbprop.modules.norm import GroupNorm
from fbprop.modules.shape import Flatten, Pad, Reshape
from fbprop.modules.squash import Bias, Logistic, ReLU, ScaledTanh, Squash, Tanh
from fbprop.network import Network, Node, unfold
from fbprop.optim import SDLM, SGD, Adam, AdamW, Optimizer, lbfgs
from fbprop.params import Param, ParamPool
from fbprop.serialize import load, save
from fbprop.state import State
from fbprop.train import Meter, Trainer, TrainingDiverged, evaluate

__version__ = "0.1.0"

__all__ = [
    "Adam", "AdamW", "Bias", "build_machine", "Cascade", "Conv2d", "data", "Dropout", "EnergyLoss", "Euclidean",
    "evaluate", "GroupNorm",
    "Flatten", "gradcheck", "GradcheckError", "GradcheckReport", "HingeLoss", "infer", "L1", "L2",
    "lbfgs", "lenet5", "LENET5_BITMAPS", "LENET5_C3_TABLE", "lenet5_codes", "lenet5_energy",
    "lenet_modern", "Linear", "load", "Logistic", "LogLoss", "Loss", "LOSSES", "LVQ2Loss", "Machine",
    "MaxPool", "MCELoss", "Meter", "mlp", "Module", "NegatedScores", "NLLLoss", "nn_2layer",
    "nn_layer", "onehot_codes", "Optimizer", "Pad", "Param", "ParamPool", "PerceptronLoss",
    "random_codes", "RBF", "Regularizer", "ReLU", "Reshape", "save", "ScaledTanh", "SDLM", "SGD",
    "SquareExpLoss", "SquareSquareLoss", "Squash", "State", "Subsampling", "Tanh", "Trainer",
    "TrainingDiverged", "Concat", "ContrastiveLoss", "Copy", "CosineSimilarity", "Distance", "Network", "Node",
    "Product", "Scale", "Split", "SquaredDistance", "Sum", "unfold", "minimize_energy", "Zeros",
]
