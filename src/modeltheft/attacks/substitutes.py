"""Substitute models the thief trains: plain scikit-learn estimators, chosen by name."""

from collections.abc import Callable

from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC

from modeltheft.attacks.cnn import CNNClassifier
from modeltheft.attacks.equation_solving import EquationSolver
from modeltheft.errors import ConfigError

SUBSTITUTES: dict[str, Callable[[int], ClassifierMixin]] = {
    # The lab's copy: LogisticRegression(max_iter=1000).
    "lr": lambda seed: LogisticRegression(max_iter=1000),
    "mlp": lambda seed: MLPClassifier(
        hidden_layer_sizes=(128,), alpha=1e-3, max_iter=1000, random_state=seed
    ),
    "svc": lambda seed: SVC(C=10.0, gamma="scale", random_state=seed),
    "rf": lambda seed: RandomForestClassifier(n_estimators=100, random_state=seed),
    "knn": lambda seed: KNeighborsClassifier(n_neighbors=3),
    "equation-solver": lambda seed: EquationSolver(),
    # Needs the optional PyTorch extra: pip install 'modeltheft[cnn]'.
    "cnn": lambda seed: CNNClassifier(random_state=seed),
}


def make_substitute(name: str, seed: int = 0) -> ClassifierMixin:
    """An unfitted substitute; ``seed`` feeds estimators that have a random_state."""
    if name not in SUBSTITUTES:
        raise ConfigError(
            f"unknown substitute {name!r}; choose one of {', '.join(sorted(SUBSTITUTES))}"
        )
    return SUBSTITUTES[name](seed)
