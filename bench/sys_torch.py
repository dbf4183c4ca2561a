"""PyTorch (CPU, eager) versions of fbprop's MLP and LeNet-5, parameter for parameter.

Each model registers its parameters in fbprop's pool order with fbprop's shapes, so a flat fbprop
vector loads into it by position (`load`), and the check in `check.py` compares them the same way.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from common import split
from torch import nn

A, S = 1.7159, 2.0 / 3.0


class TorchMLP(nn.Module):
    """784-300-100-10, tanh hidden layers, linear scores, softmax cross-entropy (= NLL over −scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.scores(x), y)

    def answers(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x).argmax(1)


class TorchLeNet5(nn.Module):
    """fbprop's lenet5 spec: pad 2, C1 5×5 + per-map bias, S2 (avg-pool · a + b), C3 with the
    connection table as a weight mask, S4, C5 5×5, F6 120→84, every squash 1.7159 tanh(2u/3),
    RBF energies ½‖x − t_k‖² to fixed codes, L = CE(−βE, y)/β = E_y + (1/β) log Σ exp(−βE)."""

    def __init__(self, codes: np.ndarray, table: np.ndarray, beta: float, dtype: torch.dtype) -> None:
        super().__init__()

        def p(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape, dtype=dtype))

        self.c1, self.b1, self.a2, self.bb2 = p(6, 1, 5, 5), p(6, 1, 1), p(6, 1, 1), p(6, 1, 1)
        self.c3, self.b3, self.a4, self.bb4 = p(16, 6, 5, 5), p(16, 1, 1), p(16, 1, 1), p(16, 1, 1)
        self.c5, self.b5, self.f6, self.b6 = p(120, 16, 5, 5), p(120, 1, 1), p(84, 120), p(84)
        self.register_buffer("mask", torch.tensor(np.asarray(table).T[:, :, None, None], dtype=dtype))
        self.register_buffer("codes", torch.tensor(np.asarray(codes), dtype=dtype))
        self.beta = beta

    @staticmethod
    def f(u: torch.Tensor) -> torch.Tensor:
        return A * torch.tanh(S * u)

    def energies(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f
        x = F.pad(x, (2, 2, 2, 2))
        x = f(F.conv2d(x, self.c1) + self.b1)                    # C1
        x = f(F.avg_pool2d(x, 2) * self.a2 + self.bb2)            # S2
        x = f(F.conv2d(x, self.c3 * self.mask) + self.b3)         # C3, Table I
        x = f(F.avg_pool2d(x, 2) * self.a4 + self.bb4)            # S4
        x = f(F.conv2d(x, self.c5) + self.b5).flatten(1)          # C5
        x = f(F.linear(x, self.f6, self.b6))                      # F6
        return 0.5 * (x[:, None, :] - self.codes).square().sum(-1)  # RBF

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(-self.beta * self.energies(x), y) / self.beta

    def answers(self, x: torch.Tensor) -> torch.Tensor:
        return self.energies(x).argmin(1)


class TorchLeNet5Idiomatic(nn.Module):
    """LeNet-5 as a PyTorch user writes it: nn.Conv2d with a full C3 (no connection table),
    nn.AvgPool2d without coefficients, tanh, C5 as a convolution, a Linear output layer (no RBF)
    and cross-entropy. PyTorch's own initialisation: not comparable weight for weight, only in time."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(),
            nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10),
        ).to(dtype)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.net(x), y)

    def answers(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).argmax(1)


class TorchSystem:
    name = "pytorch"

    def __init__(self, model: str, init: np.ndarray, shapes, lr: float, codes=None, table=None,
                 beta: float = 0.1, threads: int | None = None, **_) -> None:
        if threads:
            torch.set_num_threads(threads)
        dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[init.dtype]
        self.net = TorchMLP().to(dtype) if model == "mlp" else TorchLeNet5(codes, table, beta, dtype)
        got = [tuple(q.shape) for q in self.net.parameters()]
        if got != [tuple(s) for s in shapes]:
            raise ValueError(f"TorchSystem({model}): expected parameter shapes {shapes}, got {got}")
        self.load(split(init, shapes))
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)

    def native(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x), torch.from_numpy(y)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.net.loss(x, y).backward()
        self.opt.step()

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.net.answers(x)

    def params(self) -> list[np.ndarray]:
        return [q.detach().numpy().copy() for q in self.net.parameters()]

    def load(self, params: list[np.ndarray]) -> None:
        with torch.no_grad():
            for q, v in zip(self.net.parameters(), params):
                q.copy_(torch.from_numpy(np.ascontiguousarray(v)))


class TorchIdiomaticSystem(TorchSystem):
    """The idiomatic LeNet-5 (`TorchLeNet5Idiomatic`) with the same batches, rate and SGD step."""

    name = "pytorch-idiomatic"

    def __init__(self, model: str, init: np.ndarray, lr: float, threads: int | None = None, **_) -> None:
        if model != "lenet5":
            raise ValueError(f"TorchIdiomaticSystem: expected model 'lenet5', got {model!r}")
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(0)
        dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[init.dtype]
        self.net = TorchLeNet5Idiomatic(dtype)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)


def versions() -> dict:
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available()}
