"""The OWASP ML05 lab's task: scikit-learn's bundled 8×8 digits, pixels scaled to [0, 1].

The split is the lab's: 30 % (540 images) for evaluation, ``random_state=42``. The 200
attacker-public digits are a stratified, seeded part of the 1,257 training digits; a victim
trained *with holdout* never sees them (the lab's own victim does).
"""

from functools import lru_cache

import numpy as np
from sklearn.datasets import load_digits

from modeltheft.tasks.base import Task, split_rows

EVAL_SIZE = 0.3
SPLIT_SEED = 42
PUBLIC_SIZE = 200
IMAGE_SHAPE = (8, 8)


@lru_cache(maxsize=1)
def digits_task() -> Task:
    """The ``digits`` task with the lab's split."""
    digits = load_digits()
    X = digits.data / 16.0
    data = split_rows(
        X,
        digits.target,
        eval_size=EVAL_SIZE,
        public_size=PUBLIC_SIZE,
        seed=SPLIT_SEED,
        stratify_eval=False,  # the lab's split
        source={"dataset": "sklearn.datasets.load_digits", "scaling": "pixels / 16"},
    )
    n = X.shape[1]
    return Task(
        name="digits",
        feature_names=tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8)),
        lower=np.zeros(n),
        upper=np.ones(n),
        classes=np.arange(10),
        image_shape=IMAGE_SHAPE,
        data=data,
        description="8×8 handwritten digits (the OWASP ML05 lab), pixels in [0, 1]",
    )
