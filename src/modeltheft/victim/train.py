"""Train a victim of one model family on the lab split."""

from collections.abc import Callable
from dataclasses import dataclass, field

from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC

from modeltheft.data import holdout_split, lab_split
from modeltheft.errors import ConfigError

VICTIM_SEED = 42


def _rf() -> ClassifierMixin:
    return RandomForestClassifier(n_estimators=50, random_state=VICTIM_SEED)


def _lr() -> ClassifierMixin:
    return LogisticRegression(max_iter=1000)


def _mlp() -> ClassifierMixin:
    return MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=VICTIM_SEED)


def _svc() -> ClassifierMixin:
    # Platt-calibrated SVC: scikit-learn's replacement for SVC(probability=True).
    return CalibratedClassifierCV(SVC(), ensemble=False)


def _gbdt() -> ClassifierMixin:
    return HistGradientBoostingClassifier(random_state=VICTIM_SEED)


FAMILIES: dict[str, Callable[[], ClassifierMixin]] = {
    "rf": _rf,
    "lr": _lr,
    "mlp": _mlp,
    "svc": _svc,
    "gbdt": _gbdt,
}
DEFAULT_FAMILY = "rf"


@dataclass
class TrainedVictim:
    """A fitted victim with the metadata that describes how it was made."""

    model: ClassifierMixin
    metadata: dict[str, object] = field(default_factory=dict)


SPLITS = ("lab", "holdout")


def train_victim(family: str = DEFAULT_FAMILY, split_name: str = "lab") -> TrainedVictim:
    """Fit the victim of ``family`` and measure its test accuracy on the lab's 540 test digits.

    ``split_name="lab"`` trains on the lab's 1,257 training digits; ``"holdout"`` on those less
    the 200 attacker-public digits of :func:`modeltheft.data.holdout_split`.
    """
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    if split_name not in SPLITS:
        raise ConfigError(f"unknown split {split_name!r}; choose one of {', '.join(SPLITS)}")
    split = lab_split() if split_name == "lab" else holdout_split().victim
    model = FAMILIES[family]()
    model.fit(split.X_train, split.y_train)
    accuracy = float(model.score(split.X_test, split.y_test))
    metadata: dict[str, object] = {
        "family": family,
        "estimator": type(model).__name__,
        "params": {k: repr(v) for k, v in sorted(model.get_params(deep=False).items())},
        "split": {"name": split_name, **split.describe()},
        "test_accuracy": accuracy,
        "n_features": int(split.X_train.shape[1]),
        "classes": [int(c) for c in model.classes_],
    }
    return TrainedVictim(model=model, metadata=metadata)
