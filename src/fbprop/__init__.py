"""fbprop: gradient-based learning in multi-module systems (fprop, bprop, bbprop)."""

from fbprop.gradcheck import GradcheckError, GradcheckReport, gradcheck
from fbprop.losses import (
    L1, L2, LOSSES, EnergyLoss, HingeLoss, LogLoss, Loss, LVQ2Loss, MCELoss, NLLLoss,
    PerceptronLoss, Regularizer, SquareExpLoss, SquareSquareLoss, infer,
)
from fbprop.module import Cascade, Module
from fbprop.modules.distance import RBF, Euclidean, NegatedScores, onehot_codes, random_codes
from fbprop.modules.linear import Linear
from fbprop.modules.squash import Bias, Logistic, ReLU, ScaledTanh, Squash, Tanh
from fbprop.optim import SDLM, SGD, Optimizer, lbfgs
from fbprop.params import Param, ParamPool
from fbprop.state import State

__version__ = "0.1.0"

__all__ = [
    "RBF", "SDLM", "SGD", "Bias", "Cascade", "EnergyLoss", "Euclidean", "GradcheckError",
    "GradcheckReport", "HingeLoss", "L1", "L2", "LOSSES", "LVQ2Loss", "Linear", "LogLoss",
    "Logistic", "Loss", "MCELoss", "Module", "NLLLoss", "NegatedScores", "Optimizer", "Param",
    "ParamPool", "PerceptronLoss", "ReLU", "Regularizer", "ScaledTanh", "SquareExpLoss",
    "SquareSquareLoss", "Squash", "State", "Tanh", "gradcheck", "infer", "lbfgs", "onehot_codes",
    "random_codes",
]
