"""scikit-learn's bundled tables as tasks, unscaled: ``breast-cancer``, ``wine``, ``iris``.

Bounds are the data set's documented ranges (the minimum and maximum of each column over the
whole bundled table, as scikit-learn's data set descriptions list them): what a published
schema would say. Integer-valued columns are marked. The split is stratified and seeded: 30 %
for evaluation, and a quarter of the training rows public (an attacker may own them).
"""

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from sklearn import datasets

from modeltheft.tasks.base import Task, split_rows

EVAL_SIZE = 0.3
PUBLIC_FRACTION = 0.25
SPLIT_SEED = 42

LOADERS: dict[str, tuple[Callable, str]] = {
    "breast-cancer": (
        datasets.load_breast_cancer,
        "Wisconsin breast cancer (30 features, 2 classes)",
    ),
    "wine": (datasets.load_wine, "wine cultivars (13 features, 3 classes)"),
    "iris": (datasets.load_iris, "iris flowers (4 features, 3 classes)"),
}


@lru_cache(maxsize=len(LOADERS))
def tabular_task(name: str) -> Task:
    """One bundled table as a task (see the module docstring for bounds and split)."""
    loader, description = LOADERS[name]
    bunch = loader()
    X, y = np.asarray(bunch.data, dtype=float), np.asarray(bunch.target)
    data = split_rows(
        X,
        y,
        eval_size=EVAL_SIZE,
        public_size=PUBLIC_FRACTION,
        seed=SPLIT_SEED,
        stratify_eval=True,
        source={
            "dataset": f"sklearn.datasets.{loader.__name__}",
            "scaling": "none",
            "public_fraction": PUBLIC_FRACTION,
        },
    )
    return Task(
        name=name,
        feature_names=tuple(str(f) for f in bunch.feature_names),
        lower=X.min(axis=0),
        upper=X.max(axis=0),
        classes=np.unique(y),
        integer=np.all(np.round(X) == X, axis=0),
        data=data,
        description=description,
    )
