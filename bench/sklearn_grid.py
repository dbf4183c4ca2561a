"""GridSearchCV over EnergyClassifier's learning rate on scikit-learn's digits (README, "From Python").

    OPENBLAS_NUM_THREADS=1 python bench/sklearn_grid.py

5-fold search on the digits' 1437 training images (the same 80/20 split as train_test_split with
random_state=0), then the best model's accuracy on the 360 held-out ones.
"""

from __future__ import annotations

import time

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split

from fbprop.sklearn import EnergyClassifier


def main() -> None:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    start = time.perf_counter()
    search = GridSearchCV(EnergyClassifier(hidden=(64,), epochs=20, random_state=0),
                          {"lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]}, cv=5, n_jobs=2).fit(x_train, y_train)
    seconds = time.perf_counter() - start
    for lr, mean, std in zip(search.cv_results_["param_lr"], search.cv_results_["mean_test_score"],
                             search.cv_results_["std_test_score"]):
        print(f"lr {lr:g}: cross-validated accuracy {mean:.4f} ± {std:.4f}")
    print(f"best {search.best_params_}, held-out accuracy {search.score(x_test, y_test):.4f} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
