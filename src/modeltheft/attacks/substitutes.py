"""Substitute models the thief trains: plain scikit-learn estimators, registered by name.

On the digits (pixels already in [0, 1]) the estimators are used as they are, as the lab
does. On a tabular task the scale-sensitive ones (``lr``, ``mlp``, ``svc``, ``knn``) are
pipelines that first standardise each feature with a StandardScaler fitted on the queries
the thief sent: nothing the thief does not have, and unscaled columns spanning 0.05 to 4,000
(breast-cancer) otherwise leave a logistic regression or an MLP far from the victim.
"""

from collections.abc import Callable
from typing import Any

from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from modeltheft.attacks.base import require_digit_images
from modeltheft.attacks.cnn import CNNClassifier
from modeltheft.attacks.equation_solving import EquationSolver
from modeltheft.registry import Interval, Registry
from modeltheft.tasks import Task

SUBSTITUTES: Registry[ClassifierMixin] = Registry("substitute")
SCALED = ("lr", "mlp", "svc", "knn")
"""Substitutes standardised per feature on tabular tasks."""
_SEED = {"seed": [Interval(int, 0, 2**32 - 1)]}


def substitute(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a factory ``(seed) -> estimator`` as the substitute ``name``."""

    def register(factory: Callable[..., Any]) -> Callable[..., Any]:
        factory._parameter_constraints = _SEED  # type: ignore[attr-defined]
        SUBSTITUTES.register(factory, name=name)
        return factory

    return register


@substitute("lr")
def _lr(seed: int = 0) -> ClassifierMixin:
    # The lab's copy: LogisticRegression(max_iter=1000).
    return LogisticRegression(max_iter=1000)


@substitute("mlp")
def _mlp(seed: int = 0) -> ClassifierMixin:
    return MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, max_iter=1000, random_state=seed)


@substitute("svc")
def _svc(seed: int = 0) -> ClassifierMixin:
    return SVC(C=10.0, gamma="scale", random_state=seed)


@substitute("rf")
def _rf(seed: int = 0) -> ClassifierMixin:
    return RandomForestClassifier(n_estimators=100, random_state=seed)


@substitute("knn")
def _knn(seed: int = 0) -> ClassifierMixin:
    return KNeighborsClassifier(n_neighbors=3)


@substitute("equation-solver")
def _equation_solver(seed: int = 0) -> ClassifierMixin:
    return EquationSolver()


@substitute("cnn")
def _cnn(seed: int = 0) -> ClassifierMixin:
    # Needs the optional PyTorch extra: pip install 'modeltheft[cnn]'.
    return CNNClassifier(random_state=seed)


def make_substitute(name: str, seed: int = 0, task: Task | None = None) -> ClassifierMixin:
    """An unfitted substitute; ``seed`` feeds estimators that have a random_state.

    With a ``task``, the substitute is checked against it (``cnn`` needs 8×8 images) and, on
    a tabular task, the scale-sensitive estimators standardise their inputs first.
    """
    model = SUBSTITUTES.build(name, {"seed": int(seed)})
    if task is None:
        return model
    if name == "cnn":
        require_digit_images(task, "substitute 'cnn'")
    if name in SCALED and not task.is_image:
        return make_pipeline(StandardScaler(), model)
    return model


def final_estimator(model: ClassifierMixin) -> ClassifierMixin:
    """The estimator at the end of a pipeline (the model itself otherwise)."""
    return model.steps[-1][1] if isinstance(model, Pipeline) else model


__all__ = ["SCALED", "SUBSTITUTES", "final_estimator", "make_substitute"]
