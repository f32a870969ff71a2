"""Knockoff Nets (Orekondy, Schiele & Fritz, CVPR 2019): natural-image patches as queries."""

from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage
from sklearn.cluster import KMeans
from sklearn.datasets import load_sample_images

from modeltheft.attacks.base import (
    DIGIT_IMAGE,
    QueryHistory,
    Source,
    Strategy,
    require_digit_images,
)
from modeltheft.registry import Interval, Options
from modeltheft.tasks import Task

IMAGE_SHAPE = DIGIT_IMAGE
N_FEATURES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]

POLICIES = ("random", "adaptive")
REWARDS = ("all", "certainty", "diversity", "loss")
POOL_SIZE = 12_000
POOL_SEED = 0  # the pool and its clusters are fixed; only the attack's choices use its rng
_SIDE = 32  # UCI digits are 32x32 bitmaps counted in 4x4 blocks
_BLOCK = _SIDE // IMAGE_SHAPE[0]
_REGIONS = (12, 16, 20, 24, 32, 40, 48, 64)  # source pixels covered by a patch's height
_ASPECTS = (0.6, 0.7, 0.8)  # patch width / height: digits are taller than wide
_EDGE_QUANTILES = (0.72, 0.88)  # share of a window's pixels that are not edges
_MIN_INK = 30  # edge pixels (of 32x32) a window needs to become a patch


def _gray_images() -> list[np.ndarray]:
    """scikit-learn's bundled photos (china.jpg, flower.jpg) as grayscale in [0, 1]."""
    weights = np.array([0.299, 0.587, 0.114])
    return [image.astype(float) @ weights / 255.0 for image in load_sample_images().images]


def _edge_map(image: np.ndarray, region: int) -> np.ndarray:
    """Gradient magnitude after rescaling so ``region`` source pixels span 32."""
    scaled = ndimage.zoom(image, _SIDE / region, order=1)
    smooth = ndimage.gaussian_filter(scaled, 1.0)
    return np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))


def _dilate(ink: np.ndarray) -> np.ndarray:
    """Binary dilation of a stack (n, h, w) by a 3x3 cross: edges become pen strokes."""
    out = ink.copy()
    out[:, 1:] |= ink[:, :-1]
    out[:, :-1] |= ink[:, 1:]
    out[:, :, 1:] |= ink[:, :, :-1]
    out[:, :, :-1] |= ink[:, :, 1:]
    return out


def _fit_box(ink: np.ndarray) -> np.ndarray:
    """Crop each bitmap of (n, h, w) to its ink's bounding box, scale it to 32 pixels high
    (or 32 wide if wider), centre it on a 32x32 canvas and count ink in 4x4 blocks, as the
    UCI digits were made. Returns (n, 64) in [0, 1]."""
    n, h, w = ink.shape
    rows, cols = ink.any(axis=2), ink.any(axis=1)
    y0, y1 = rows.argmax(1), h - 1 - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), w - 1 - cols[:, ::-1].argmax(1)
    bh, bw = (y1 - y0 + 1).astype(float), (x1 - x0 + 1).astype(float)
    scale = np.minimum(_SIDE / bh, _SIDE / bw)
    oh, ow = np.round(bh * scale), np.round(bw * scale)
    oy, ox = (_SIDE - oh) // 2, (_SIDE - ow) // 2
    grid = np.arange(_SIDE) + 0.5
    u = (grid[None, :] - oy[:, None]) / scale[:, None]  # (n, 32) offsets into the box
    v = (grid[None, :] - ox[:, None]) / scale[:, None]
    inside_u = (u >= 0) & (u < bh[:, None])
    inside_v = (v >= 0) & (v < bw[:, None])
    sy = np.clip(y0[:, None] + np.floor(u).astype(int), 0, h - 1)
    sx = np.clip(x0[:, None] + np.floor(v).astype(int), 0, w - 1)
    canvas = ink[np.arange(n)[:, None, None], sy[:, :, None], sx[:, None, :]]
    canvas &= inside_u[:, :, None] & inside_v[:, None, :]
    blocks = canvas.reshape(n, IMAGE_SHAPE[0], _BLOCK, IMAGE_SHAPE[1], _BLOCK)
    return blocks.mean(axis=(2, 4)).reshape(n, N_FEATURES)


@lru_cache(maxsize=1)
def patch_pool() -> np.ndarray:
    """The candidate transfer set: POOL_SIZE digit-like 8x8 patches of the two photos.

    Windows 32 high at eight scales (8 x 8 patches covering 12..64 source pixels) and three
    aspect ratios are placed at random (fixed seed); the strongest 12-28 % of gradient
    magnitudes are taken as ink, thickened to strokes, box-normalised and block-counted.
    """
    rng = np.random.default_rng(POOL_SEED)
    images = _gray_images()
    per_config = int(np.ceil(1.2 * POOL_SIZE / (len(images) * len(_REGIONS) * len(_ASPECTS))))
    patches = []
    for image in images:
        for region in _REGIONS:
            edges = _edge_map(image, region)
            for aspect in _ASPECTS:
                width = round(_SIDE * aspect)
                top = rng.integers(0, edges.shape[0] - _SIDE + 1, size=per_config)
                left = rng.integers(0, edges.shape[1] - width + 1, size=per_config)
                windows = np.lib.stride_tricks.sliding_window_view(edges, (_SIDE, width))
                stack = windows[top, left]
                ranked = np.sort(stack.reshape(per_config, -1), axis=1)
                share = rng.uniform(*_EDGE_QUANTILES, size=per_config)
                cut = ranked[np.arange(per_config), (share * ranked.shape[1]).astype(int)]
                ink = _dilate(stack > cut[:, None, None])
                patches.append(_fit_box(ink[ink.sum(axis=(1, 2)) >= _MIN_INK]))
    pool = np.concatenate(patches)
    pool = pool[rng.permutation(len(pool))[:POOL_SIZE]]
    pool.flags.writeable = False
    return pool


@lru_cache(maxsize=8)
def pool_arms(n_arms: int) -> np.ndarray:
    """Arm (k-means cluster, fixed random_state) of every pool patch."""
    labels = KMeans(n_arms, n_init=1, random_state=POOL_SEED).fit_predict(patch_pool())
    labels.flags.writeable = False
    return labels


def _softmax(h: np.ndarray) -> np.ndarray:
    e = np.exp(h - h.max())
    return e / e.sum()


class NaturalPatches(Strategy):
    """Patches of natural photos mapped to the digits' domain (Knockoff's transfer set).

    ``policy="random"`` draws unused patches uniformly. ``policy="adaptive"`` is Knockoff's
    gradient bandit (Sutton & Barto §2.8) over ``n_arms`` k-means clusters of the pool: each
    row's arm is drawn from softmax(H), and once its answer is in the history, H moves by
    ``alpha`` (r − r̄)(1[a = A] − π) with r̄ the running mean reward. The reward averages
    Knockoff's certainty (top-2 margin, soft answers only), diversity (how far the answer
    exceeds the mean of all answers so far; 1 − the label's frequency for hard labels) and
    loss (normalised cross-entropy of the substitute that was current when the row was
    proposed, against the answer), or uses only one of them. The pool is fixed; every choice
    comes from the rng. ``needs_model`` is set per instance: only the loss reward needs it.
    """

    name: ClassVar[str] = "natural-patches"
    paper: ClassVar[str] = (
        "Orekondy, Schiele & Fritz, Knockoff Nets: Stealing Functionality of Black-Box Models, "
        "CVPR 2019"
    )

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "policy": [Options(*POLICIES)],
        "n_arms": [Interval(int, 2, 200)],
        "alpha": [Interval(float, 0, None, closed="neither")],
        "reward": [Options(*REWARDS)],
    }

    def __init__(
        self, *, policy: str = "random", n_arms: int = 20, alpha: float = 0.1, reward: str = "all"
    ) -> None:
        self.policy = policy
        self.n_arms = n_arms
        self.alpha = alpha
        self.reward = reward
        self.needs_model = policy == "adaptive" and reward in ("all", "loss")
        self._reset()

    def _reset(self) -> None:
        self._picked: list[int] = []  # pool index of every row proposed, in order
        self._arm_of: list[int] = []  # arm of every row proposed (-1: not chosen by the bandit)
        self._rewarded = 0  # rows whose answers have been turned into rewards
        self._preferences = np.zeros(0)  # H, sized once n_arms is validated
        self._baseline = 0.0
        self._n_rewards = 0
        self._answer_sum = np.zeros(0)
        self._n_answers = 0
        self._model = None  # the substitute current when the last batch was proposed

    @property
    def arm_probabilities(self) -> np.ndarray:
        """The bandit's current policy softmax(H) over arms (uniform before any reward)."""
        if len(self._preferences) == 0:
            return np.full(self.n_arms, 1.0 / self.n_arms)
        return _softmax(self._preferences)

    def check_task(self, task: Task) -> None:
        require_digit_images(task, f"strategy {self.name!r}")

    def setup(self, task: Task, budget: int) -> None:
        super().setup(task, budget)
        self._reset()

    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        self.validate_params()
        self.check_task(history.target)
        pool = patch_pool()
        sent = history.n_sent
        if sent < len(self._picked):  # a new attack (or a history we did not build): start over
            self._reset()
        if len(self._preferences) != self.n_arms:
            self._preferences = np.zeros(self.n_arms)
        missing = sent - len(self._picked)  # rows sent that we did not propose
        self._picked += [-1] * missing
        self._arm_of += [-1] * missing
        if self.policy == "adaptive":
            self._learn(history)
        self._model = history.model
        used = np.zeros(len(pool), dtype=bool)
        picked = np.asarray(self._picked, dtype=int)
        used[picked[picked >= 0]] = True
        if self.policy == "random":
            arms = np.full(n, -1)
            picks = self._draw(rng, np.flatnonzero(~used), n)
        else:
            members = pool_arms(self.n_arms)
            arms = rng.choice(self.n_arms, size=n, p=self.arm_probabilities)
            picks = np.empty(n, dtype=int)
            for arm in np.unique(arms):
                rows = np.flatnonzero(arms == arm)
                candidates = np.flatnonzero((members == arm) & ~used)
                if len(candidates) < len(rows):
                    candidates = np.flatnonzero(~used)
                picks[rows] = self._draw(rng, candidates, len(rows))
                used[picks[rows]] = True
        self._picked += picks.tolist()
        self._arm_of += arms.tolist()
        return np.array(pool[picks])

    @staticmethod
    def _draw(rng: np.random.Generator, candidates: np.ndarray, n: int) -> np.ndarray:
        """``n`` distinct candidates, or repeats once the pool is used up."""
        if len(candidates) >= n:
            return rng.choice(candidates, size=n, replace=False)
        return rng.choice(POOL_SIZE, size=n, replace=True)

    def _learn(self, history: QueryHistory) -> None:
        """Turn the answers to rows proposed earlier into rewards and bandit updates."""
        if self._rewarded >= history.n_sent:
            return
        k = history.target.n_classes
        if len(self._answer_sum) != k:
            self._answer_sum = np.zeros(k)
        X = np.concatenate(history.X)[self._rewarded :]
        labels = np.concatenate(history.labels)[self._rewarded :]
        probabilities = np.concatenate(
            [
                p if p is not None and p.shape == (len(x), k) else np.full((len(x), k), np.nan)
                for x, p in zip(history.X, history.probabilities, strict=True)
            ]
        )[self._rewarded :]
        arms = self._arm_of[self._rewarded :]
        self._rewarded = history.n_sent
        answered = (labels >= 0) & (labels < k)
        if not answered.any():
            return
        predicted = None
        if self._model is not None and self.reward in ("all", "loss"):
            predicted = np.full((len(X), k), 1e-6)
            classes = history.target.class_index(self._model.classes_)
            predicted[np.ix_(answered, classes)] = self._model.predict_proba(X[answered])
        for i in np.flatnonzero(answered):
            soft = bool(np.isfinite(probabilities[i]).all())
            answer = probabilities[i] if soft else np.eye(k)[labels[i]]
            reward = self._reward(answer, soft, None if predicted is None else predicted[i])
            self._answer_sum += answer
            self._n_answers += 1
            if arms[i] >= 0:
                self._update(arms[i], reward)

    def _reward(self, answer: np.ndarray, soft: bool, predicted: np.ndarray | None) -> float:
        """Knockoff's reward for one answer, each part in [0, 1]."""
        parts = []
        if self.reward in ("all", "certainty") and soft:
            top = np.sort(answer)
            parts.append(top[-1] - top[-2])
        if self.reward in ("all", "diversity"):
            mean = self._answer_sum / max(self._n_answers, 1)
            parts.append(float(np.maximum(answer - mean, 0.0).sum()))
        if self.reward in ("all", "loss") and predicted is not None:
            predicted = predicted / predicted.sum()
            entropy = -float(answer @ np.log(np.clip(predicted, 1e-6, 1.0)))
            parts.append(min(entropy / np.log(len(answer)), 1.0))
        return float(np.mean(parts)) if parts else 0.0

    def _update(self, arm: int, reward: float) -> None:
        """One gradient-bandit step with the running-average baseline."""
        pi = self.arm_probabilities
        step = self.alpha * (reward - self._baseline)
        self._preferences -= step * pi
        self._preferences[arm] += step
        self._n_rewards += 1
        self._baseline += (reward - self._baseline) / self._n_rewards


class NaturalPatchesSource(Source):
    """Unused patches of the fixed pool, drawn with the rng (the pool for ``active``)."""

    name: ClassVar[str] = "natural-patches"
    paper: ClassVar[str] = NaturalPatches.paper

    def check_task(self, task: Task, who: str) -> None:
        require_digit_images(task, who)

    def draw(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        require_digit_images(task, f"source {self.name!r}")
        pool = patch_pool()
        return np.array(pool[NaturalPatches._draw(rng, np.flatnonzero(np.ones(len(pool))), n)])
