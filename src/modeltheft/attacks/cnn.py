"""A small convolutional substitute on PyTorch, the optional ``cnn`` extra.

PyTorch is imported lazily inside the methods, so importing this module (and registering the
substitute) costs nothing and works without it; fitting without it raises ConfigError.
"""

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from modeltheft.errors import ConfigError

INSTALL_HINT = "the cnn substitute needs PyTorch: pip install 'modeltheft[cnn]' (torch==2.13.0)"
SIDE = 8
N_PIXELS = SIDE * SIDE


def _import_torch() -> Any:
    """The torch module, or ConfigError with the install hint."""
    try:
        import torch
    except ImportError as error:
        raise ConfigError(INSTALL_HINT) from error
    return torch


def _build_net(torch: Any, n_classes: int) -> Any:
    """conv 1→32, conv 32→64, max-pool, dense 1024→128, dropout, dense →n_classes."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (SIDE // 2) * (SIDE // 2), 128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, n_classes),
    )


def _as_images(X: np.ndarray) -> np.ndarray:
    """Rows of 64 pixels in [0, 1] as a float32 (n, 1, 8, 8) array (a fresh, writable copy)."""
    X = np.array(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != N_PIXELS:
        raise ValueError(f"the cnn substitute expects rows of {N_PIXELS} pixels, got {X.shape}")
    return X.reshape(-1, 1, SIDE, SIDE)


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """A small CNN for 8x8 digits with scikit-learn manners; deterministic from random_state."""

    def __init__(
        self,
        epochs: int = 60,
        lr: float = 1e-3,
        batch_size: int = 64,
        weight_decay: float = 1e-4,
        random_state: int = 0,
    ) -> None:
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.random_state = random_state

    def fit(
        self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> "CNNClassifier":
        """Fit on hard labels, optionally weighting each row's cross-entropy."""
        torch = _import_torch()
        y = np.asarray(y)
        classes, index = np.unique(y, return_inverse=True)
        targets = np.zeros((len(y), len(classes)), dtype=np.float32)
        targets[np.arange(len(y)), index] = 1.0
        return self._train(torch, X, targets, classes, sample_weight)

    def fit_soft(self, X: np.ndarray, targets: np.ndarray, classes: np.ndarray) -> "CNNClassifier":
        """Fit by cross-entropy against soft targets; column j of ``targets`` is ``classes[j]``."""
        torch = _import_torch()
        targets = np.array(targets, dtype=np.float32)
        classes = np.asarray(classes)
        if targets.ndim != 2 or targets.shape[1] != len(classes):
            raise ValueError(
                f"targets of shape {targets.shape} do not match {len(classes)} classes"
            )
        return self._train(torch, X, targets, classes, None)

    def _train(
        self,
        torch: Any,
        X: np.ndarray,
        targets: np.ndarray,
        classes: np.ndarray,
        sample_weight: np.ndarray | None,
    ) -> "CNNClassifier":
        """The training loop shared by fit and fit_soft."""
        images = _as_images(X)
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} rows but {len(targets)} targets")
        if len(images) == 0:
            raise ValueError("cannot fit the cnn substitute on zero rows")
        weights = np.ones(len(images), dtype=np.float32)
        if sample_weight is not None:
            weights = np.array(sample_weight, dtype=np.float32).reshape(-1)
            if len(weights) != len(images) or weights.sum() <= 0:
                raise ValueError("sample_weight must hold one non-negative weight per row")
            weights *= len(weights) / weights.sum()
        rng = np.random.default_rng(self.random_state)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            # fork_rng keeps the caller's global torch RNG untouched by init and dropout.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.random_state))
                net = _build_net(torch, len(classes))
                optimiser = torch.optim.Adam(
                    net.parameters(), lr=self.lr, weight_decay=self.weight_decay
                )
                inputs = torch.from_numpy(images)
                soft = torch.from_numpy(targets)
                row_weights = torch.from_numpy(weights)
                net.train()
                for _ in range(int(self.epochs)):
                    order = torch.from_numpy(rng.permutation(len(images)))
                    for start in range(0, len(images), int(self.batch_size)):
                        batch = order[start : start + int(self.batch_size)]
                        log_p = torch.log_softmax(net(inputs[batch]), dim=1)
                        loss = -((soft[batch] * log_p).sum(dim=1) * row_weights[batch]).mean()
                        optimiser.zero_grad()
                        loss.backward()
                        optimiser.step()
                net.eval()
        finally:
            torch.set_num_threads(threads)
        self.net_ = net
        self.classes_ = classes
        self.n_features_in_ = N_PIXELS
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "net_")
        torch = _import_torch()
        images = torch.from_numpy(_as_images(X))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.net_.eval()
            with torch.no_grad():
                probabilities = torch.softmax(self.net_(images), dim=1).numpy()
        finally:
            torch.set_num_threads(threads)
        return probabilities.astype(np.float64)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The most probable class of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
