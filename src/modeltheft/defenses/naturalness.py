"""Naturalness scores of queries: how unlike the training rows a row is, with honest calibration.

A scorer is fitted on *reference* rows (by default the task's training rows, in the
standardised space of :mod:`~modeltheft.defenses.ood`) and gives each row a score, larger
meaning less natural. Kinds (``make_scorer(kind, ...)``):

- ``"knn"``: mean distance to the ``k`` nearest reference rows (the OOD monitor's score);
- ``"pca"``: squared residual of the row's reconstruction from ``n_components`` principal
  components (how far it lies off the training rows' main subspace);
- ``"ppca"``: negative log-likelihood under probabilistic PCA (Tipping & Bishop 1999);
- ``"gmm"``: negative log-likelihood under a Gaussian mixture (full covariances).

Calibration is *cross-fitted*: the reference rows are split into ``folds``; each fold is
scored by a scorer fitted on the other folds (``"knn"``: leave-one-out), so no reference score
comes from a model that saw its row. :meth:`Scorer.ranks` maps a query's score to the
conformal upper-tail p-value ``(1 + #{calibration scores >= s}) / (n + 1)``, uniform (or
larger) for a row drawn like the reference rows, and small for an unnatural one.

Measured on digits (victim trained without the 200 attacker-public digits; reference its
1,057 training rows; ``benchmarks/naturalness.py``), AUC of real test digits against the
in-distribution thief's rows: renders 0.92 (``knn``) / 0.93 (``gmm``) / 0.79 (``pca``,
``ppca``); renders filtered to the 25% nearest its 20 real digits 0.79 / 0.82 / 0.62 / 0.61;
blends ``lambda * render + (1 - lambda) * real`` 0.53 / 0.55 / 0.25 / 0.21 (``pca`` finds
blends *too* smooth). No single row is damning; a stream of them is, which is what
:mod:`~modeltheft.defenses.streams` tests (``gmm`` and ``knn``: the filtered renders the thief
cannot do without).
"""

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits

from modeltheft.defenses.ood import (
    FeatureSpace,
    feature_space,
    lru_get,
    reference_rows,
    shared_knn,
)
from modeltheft.errors import ConfigError
from modeltheft.tasks.base import Task

KINDS = ("knn", "pca", "ppca", "gmm")
DEFAULTS: dict[str, dict[str, object]] = {
    "knn": {"k": 5},
    "pca": {"n_components": 20},
    "ppca": {"n_components": 20},
    "gmm": {"n_components": 10, "reg_covar": 1e-2, "seed": 0},
}
"""Each kind's parameters and their defaults (chosen by the AUCs in the module docstring)."""
_FOLDS = 5

Fitted = Callable[[np.ndarray], np.ndarray]


def _int_param(kind: str, name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(f"scorer {kind!r}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _fit(kind: str, rows: np.ndarray, params: dict[str, object]) -> Fitted:
    """A scoring function fitted on ``rows`` (larger: less natural)."""
    n, d = rows.shape
    if kind in ("pca", "ppca"):
        wanted = _int_param(kind, "n_components", params["n_components"], 1)
        pca = PCA(min(wanted, n - 1, d)).fit(rows)
        if kind == "ppca":
            return lambda X: -pca.score_samples(X)

        def residual(X: np.ndarray) -> np.ndarray:
            return np.sum((X - pca.inverse_transform(pca.transform(X))) ** 2, axis=1)

        return residual
    if kind == "gmm":
        wanted = _int_param(kind, "n_components", params["n_components"], 1)
        seed = _int_param(kind, "seed", params["seed"], 0)
        reg = params["reg_covar"]
        if isinstance(reg, bool) or not isinstance(reg, int | float) or not reg > 0:
            raise ConfigError(f"scorer 'gmm': reg_covar must be a number > 0, got {reg!r}")
        components = max(1, min(wanted, n // 10))  # at least ~10 rows per component
        gmm = GaussianMixture(
            components, covariance_type="full", reg_covar=float(reg), random_state=seed
        ).fit(rows)
        return gmm_negative_log_likelihood(gmm)
    raise ConfigError(f"scorer kind must be one of {', '.join(KINDS)}, got {kind!r}")


def gmm_negative_log_likelihood(gmm: GaussianMixture) -> Fitted:
    """``-gmm.score_samples`` in plain NumPy (full covariances): the same numbers without
    scikit-learn's per-call validation, which costs more than the work on a one-row request."""
    means = gmm.means_
    cholesky = gmm.precisions_cholesky_  # (k, d, d): x @ L gives whitened coordinates
    d = means.shape[1]
    log_det = np.log(np.diagonal(cholesky, axis1=1, axis2=2)).sum(axis=1)
    constant = np.log(gmm.weights_) + log_det - 0.5 * d * np.log(2 * np.pi)
    shifted = np.einsum("kd,kde->ke", means, cholesky)

    def score(X: np.ndarray) -> np.ndarray:
        white = np.einsum("nd,kde->nke", X, cholesky) - shifted[None, :, :]
        log_prob = constant[None, :] - 0.5 * np.einsum("nke,nke->nk", white, white)
        top = log_prob.max(axis=1)
        return -(top + np.log(np.exp(log_prob - top[:, None]).sum(axis=1)))

    return score


class Scorer:
    """A naturalness score fitted on reference rows, with cross-fitted calibration."""

    def __init__(
        self,
        kind: str,
        reference: np.ndarray,
        space: FeatureSpace | None = None,
        folds: int = _FOLDS,
        **params: object,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"scorer kind must be one of {', '.join(KINDS)}, got {kind!r}")
        unknown = sorted(set(params) - set(DEFAULTS[kind]))
        if unknown:
            raise ConfigError(
                f"scorer {kind!r} has no parameter(s) {', '.join(unknown)}; it takes "
                f"{', '.join(DEFAULTS[kind]) or 'none'}"
            )
        rows = np.asarray(reference, dtype=float)
        if rows.ndim != 2 or len(rows) < 2 * max(folds, 2):
            raise ConfigError(f"scorer {kind!r} needs at least {2 * folds} reference rows")
        self.kind = kind
        self.params = {**DEFAULTS[kind], **params}
        self.space = space if space is not None and not space.identity else None
        self.n_features = rows.shape[1]
        with threadpool_limits(1):  # threaded BLAS on small fits is 10x slower, not faster
            self._build(kind, rows, folds, space or FeatureSpace("none"))

    def _build(self, kind: str, rows: np.ndarray, folds: int, space: FeatureSpace) -> None:
        if kind == "knn":
            k = _int_param(kind, "k", self.params["k"], 1)
            # The OOD stages' scorer when they use the same rows, space and k (one index and
            # one memo); its calibration is leave-one-out already.
            knn = shared_knn(rows, k, space)
            self._score: Fitted = knn.score
            calibration = knn.calibration
        else:
            Z = self._scaled(rows)
            out = np.empty(len(Z))
            for train, held in KFold(folds, shuffle=True, random_state=0).split(Z):
                out[held] = _fit(kind, Z[train], self.params)(Z[held])
            full = _fit(kind, Z, self.params)
            self._score = lambda X: full(self._scaled(X))
            calibration = out
        self.calibration = np.sort(np.asarray(calibration, dtype=float))
        """Out-of-fold scores of the reference rows, ascending."""

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        return X if self.space is None else self.space(X)

    def score(self, X: np.ndarray) -> np.ndarray:
        """One score per row; larger means less like the reference rows."""
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ConfigError(f"rows must have {self.n_features} features, got shape {X.shape}")
        return np.asarray(self._score(X), dtype=float)

    def ranks(self, X: np.ndarray) -> np.ndarray:
        """Conformal upper-tail p-value of each row in (0, 1]: small means unnatural."""
        scores = self.score(X)
        n = len(self.calibration)
        at_least = n - np.searchsorted(self.calibration, scores, side="left")
        return (1.0 + at_least) / (n + 1.0)


_CACHE: "OrderedDict[str, Scorer]" = OrderedDict()


def make_scorer(
    kind: str, reference: str, task: Task, scale: str = "auto", **params: object
) -> Scorer:
    """A scorer of ``kind`` on the rows ``reference`` names (see :mod:`ood`), shared per
    (rows, scale, kind, parameters): fitting a mixture takes a second, stages reuse one."""
    if kind not in KINDS:
        raise ConfigError(f"scorer kind must be one of {', '.join(KINDS)}, got {kind!r}")
    rows = reference_rows(reference, task)
    space = feature_space(scale, task, rows)
    digest = hashlib.sha256(str(rows.shape).encode())
    digest.update(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
    digest.update(space.fingerprint())
    digest.update(repr((kind, sorted(params.items()))).encode())
    return lru_get(_CACHE, digest.hexdigest(), lambda: Scorer(kind, rows, space, **params))
