"""The lecture's 2-layer net, trained on-line on scikit-learn's 8x8 digits with the library API.

Two nn-layers (Linear then tanh with bias), energies = ½‖G(X) − t_k‖² to ±1 target codes,
the energy loss L = E(W, Y, X) of the lecture, plain on-line gradient descent.
Run: python examples/digits_2layer.py
"""

import numpy as np

import fbprop as fb
from fbprop.data import batches, load_dataset

data = load_dataset("digits", val_size=0, seed=0)
x_train = data.train.x.reshape(len(data.train), -1)
x_test = data.test.x.reshape(len(data.test), -1)

pool = fb.ParamPool(seed=0)
net = fb.nn_2layer(64, 40, 10, pool)                       # 64 -> 40 -> 10, tanh with bias
energy = fb.RBF(fb.onehot_codes(10), pool)                 # E_k = ½‖G(X) − t_k‖²
loss = fb.EnergyLoss()                                     # L = E(W, Y, X)
machine = fb.Machine(net, energy, loss, pool)
machine.n_train = len(x_train)
sgd = fb.SGD(pool, lr=0.02)

rng = np.random.default_rng(0)
for epoch in range(10):
    for x, y in batches(fb.data.Split(x_train, data.train.y), 1, rng):   # on-line: one sample a step
        machine.gradient(x, y)
        sgd.step()
    error = np.mean(machine.predict(x_test) != data.test.y)
    print(f"epoch {epoch + 1:2d}: test error {100 * error:.2f}%")
