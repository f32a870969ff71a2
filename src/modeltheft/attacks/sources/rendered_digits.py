"""Data-free queries: digits rendered from matplotlib's fonts, preprocessed like UCI optdigits.

A thief who knows the task ("handwritten digits, 32x32 bitmaps counted in 4x4 blocks") but owns
no data draws digits and asks the victim about them. Each row is one digit 0-9 from a font
shipped inside matplotlib (or, for ``hand_share`` of the rows, from a few built-in handwriting
centre lines), distorted (proportions, slant, rotation, elastic warp after Simard et al. 2003,
stroke weight), scaled into a 32x32 binary box and block-counted exactly like optdigits.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import matplotlib
import numpy as np
from matplotlib.font_manager import FontProperties
from matplotlib.ft2font import FT2Font
from matplotlib.textpath import TextPath
from scipy import ndimage

from modeltheft.attacks.base import DIGIT_IMAGE, Source, require_digit_images
from modeltheft.errors import ConfigError
from modeltheft.registry import BOOL, Interval
from modeltheft.tasks import Task

IMAGE_SHAPE = DIGIT_IMAGE
N_FEATURES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]

BITMAP = 32  # UCI optdigits: 32x32 binary bitmaps ...
BLOCK = BITMAP // IMAGE_SHAPE[0]  # ... counted in 4x4 blocks, giving 8x8 values in 0..16
_SUPERSAMPLE = 2  # draw at 64x64, then keep a 32x32 pixel when half of it is ink
_MARGIN = 8  # blank pixels (at 32x32 scale) around the drawing, room for thick strokes
_STEP = 0.01  # densify outlines to this edge length (glyph height 1) so distortion bends them
_HEIGHT = (31.0, 32.0)  # optdigits digits fill the box's height ...
_ASPECT = (0.8, 1.1)  # ... and keep roughly their own width (jittered)
_INK_JITTER = 0.04  # each row's ink fraction is ``ink`` ± this
_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Fonts whose digits look least like handwriting (high-contrast serif, italic, old-style
# figures); left out unless named in ``fonts``.
_UNLIKE_HANDWRITING = frozenset(
    {"cmb10", "cmmi10", "cmr10", "cmti10", "STIXGeneralItalic", "STIXGeneralBolIta"}
)
_CROSS = ndimage.generate_binary_structure(2, 1)
_SQUARE = ndimage.generate_binary_structure(2, 2)


def font_dir() -> Path:
    """The folder of TrueType fonts shipped inside matplotlib."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@dataclass(frozen=True)
class _Glyph:
    """One digit shape (x right, y up, height 1): its outline as an edge list, and its centre
    line. Hand-drawn shapes have a centre line only (no edges)."""

    points: np.ndarray  # (E, 2) edge start points
    nxt: np.ndarray  # (E,) index of each edge's end point
    skeleton: np.ndarray  # (S, 2) centre-line points


def _densify(points: np.ndarray) -> np.ndarray:
    """A closed polygon with extra points so that no edge is longer than ``_STEP``."""
    nxt = np.roll(points, -1, axis=0)
    counts = np.maximum(1, np.ceil(np.hypot(*(nxt - points).T) / _STEP).astype(int))
    t = np.concatenate([np.arange(c) / c for c in counts])
    idx = np.repeat(np.arange(len(points)), counts)
    return points[idx] + t[:, None] * (nxt[idx] - points[idx])


def _outline(font: Path, digit: int) -> list[np.ndarray] | None:
    """A digit's closed polygons from ``font`` (x right, y up), upright, its bounding box's
    lower left corner at the origin and its height 1, or None if it renders empty."""
    path = TextPath((0, 0), str(digit), size=1, prop=FontProperties(fname=str(font)))
    polygons = [p[:-1] if np.allclose(p[0], p[-1]) else p for p in path.to_polygons()]
    polygons = [np.asarray(p, dtype=float) for p in polygons if len(p) >= 3]
    if not polygons:
        return None
    slope = math.tan(math.radians(_italic_angle(font)))
    if slope:  # undo an italic font's slant; handwriting slant is drawn per query
        polygons = [p + np.column_stack([slope * p[:, 1], np.zeros(len(p))]) for p in polygons]
    points = np.concatenate(polygons)
    low, high = points.min(axis=0), points.max(axis=0)
    height = high[1] - low[1]
    if height <= 0 or high[0] - low[0] <= 0:
        return None
    return [(p - low) / height for p in polygons]


def _italic_angle(font: Path) -> float:
    """The font's italic angle in degrees (negative when it leans right), 0 if unknown."""
    post = FT2Font(str(font)).get_sfnt_table("post")
    if not post or "italicAngle" not in post:
        return 0.0
    whole, fraction = post["italicAngle"]
    return whole + (fraction / 65536 if whole >= 0 else -fraction / 65536)


def _glyph(polygons: list[np.ndarray]) -> _Glyph:
    """Densified polygons as one edge list, with their centre line."""
    chunks, nxt, offset = [], [], 0
    for polygon in polygons:
        dense = _densify(polygon)
        chunks.append(dense)
        nxt.append(offset + np.roll(np.arange(len(dense)), -1))
        offset += len(dense)
    points, nxt_index = np.concatenate(chunks), np.concatenate(nxt)
    return _Glyph(points, nxt_index, _skeleton(points, nxt_index))


def _fill(polygons: list[np.ndarray], size: int = 128) -> tuple[np.ndarray, float]:
    """Polygons (height 1) filled on a grid ``size`` rows high (row 0 at the top), and the
    scale in pixels per glyph unit."""
    points = np.concatenate(polygons)
    nxt = np.concatenate(
        [
            o + np.roll(np.arange(len(p)), -1)
            for o, p in zip(_offsets(polygons), polygons, strict=True)
        ]
    )
    scale = size - 1e-6
    pixels = np.column_stack([points[:, 0] * scale, (1.0 - points[:, 1]) * scale])
    return _rasterize(pixels, nxt, math.ceil(max(size, pixels[:, 0].max() + 1))), scale


def _offsets(polygons: list[np.ndarray]) -> list[int]:
    """Where each polygon starts in their concatenation."""
    return [0, *np.cumsum([len(p) for p in polygons])[:-1].tolist()]


def _clip(polygon: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """The part of a polygon left of the directed line from ``a`` to ``b`` (Sutherland-Hodgman,
    one edge), or None if nothing is left."""
    direction = b - a
    side = direction[0] * (polygon[:, 1] - a[1]) - direction[1] * (polygon[:, 0] - a[0])
    out = []
    for i in range(len(polygon)):
        j = (i + 1) % len(polygon)
        if side[i] >= 0:
            out.append(polygon[i])
        if (side[i] >= 0) != (side[j] >= 0):
            t = side[i] / (side[i] - side[j])
            out.append(polygon[i] + t * (polygon[j] - polygon[i]))
    return np.array(out) if len(out) >= 3 else None


def _clipped(polygons: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> list[np.ndarray] | None:
    """Every polygon clipped to the left of the line from ``a`` to ``b``, renormalized."""
    kept = [c for c in (_clip(p, a, b) for p in polygons) if c is not None]
    return _renormalize(kept) if kept else None


def _renormalize(polygons: list[np.ndarray]) -> list[np.ndarray]:
    """Polygons moved and scaled back to a bounding box at the origin with height 1."""
    points = np.concatenate(polygons)
    low, high = points.min(axis=0), points.max(axis=0)
    return [(p - low) / (high[1] - low[1]) for p in polygons]


def _without_foot(polygons: list[np.ndarray]) -> list[np.ndarray] | None:
    """A "1" without its foot serif (handwritten ones seldom have it), or None if it has none."""
    fill, scale = _fill(polygons)
    widths = fill.sum(axis=1)
    rows = np.flatnonzero(widths)
    top, bottom = rows[0], rows[-1]
    stem = np.median(widths[top + (bottom - top) * 3 // 10 : top + (bottom - top) * 7 // 10])
    foot = bottom
    while foot > top and widths[foot] > 1.5 * stem:
        foot -= 1
    if foot == bottom or bottom - foot > (bottom - top) // 3:
        return None
    level = 1.0 - (foot + 1) / scale
    return _clipped(polygons, np.array([0.0, level]), np.array([1.0, level]))


def _short_hook(polygons: list[np.ndarray]) -> list[np.ndarray] | None:
    """A "6" without the top terminal that curls right in most fonts (handwritten sixes start
    at the top and sweep down-left)."""
    width = max(p[:, 0].max() for p in polygons)
    return _clipped(polygons, np.array([1.05 * width, 0.55]), np.array([0.4 * width, 1.05]))


def _with_long_flag(polygons: list[np.ndarray]) -> list[np.ndarray] | None:
    """A footless "1" whose flag runs from the top of the stem down to mid-height, as many
    Europeans write it."""
    footless = _without_foot(polygons) or polygons
    fill, scale = _fill(footless)
    row = fill[fill.shape[0] // 2]
    runs = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
    if len(runs) < 2:
        return None
    start, end = runs[0] / scale, runs[1] / scale
    thickness = 0.8 * (end - start)
    top = np.array([start + thickness / 2, 1.0 - thickness / 2])
    tip = np.array([start - 0.25, 0.5])
    normal = np.array([top[1] - tip[1], tip[0] - top[0]])
    normal *= thickness / 2 / np.hypot(*normal)
    stroke = np.array([top + normal, tip + normal, tip - normal, top - normal])
    return _renormalize([*footless, _oriented(stroke, footless)])


def _oriented(polygon: np.ndarray, polygons: list[np.ndarray]) -> np.ndarray:
    """``polygon`` with the winding of the largest of ``polygons``, so that the nonzero fill
    joins them instead of cutting a hole."""
    outer = max(polygons, key=lambda p: abs(_area(p)))
    return polygon if np.sign(_area(polygon)) == np.sign(_area(outer)) else polygon[::-1]


def _with_crossbar(polygons: list[np.ndarray]) -> list[np.ndarray] | None:
    """A "7" with a bar across its stem at mid-height, as many Europeans write it."""
    fill, scale = _fill(polygons)
    row = fill[fill.shape[0] // 2]
    runs = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
    if len(runs) < 2:
        return None
    start, end = runs[-2], runs[-1]  # the rightmost run of ink at mid-height: the stem
    centre = (start + end) / 2 / scale
    width = max(p[:, 0].max() for p in polygons)
    thickness = float(np.clip(0.7 * (end - start) / scale, 0.04, 0.1))
    half = 0.22 * width
    bar = np.array(
        [
            [centre - half, 0.5 - thickness / 2],
            [centre + half, 0.5 - thickness / 2],
            [centre + half, 0.5 + thickness / 2],
            [centre - half, 0.5 + thickness / 2],
        ]
    )
    return _renormalize([*polygons, _oriented(bar, polygons)])


def _area(polygon: np.ndarray) -> float:
    """Signed area (positive when counter-clockwise)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


_VARIANTS = {1: (_without_foot, _with_long_flag), 6: (_short_hook,), 7: (_with_crossbar,)}


_SKELETON_SIZE = 128


def _skeleton(points: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """A glyph's centre line: Zhang-Suen thinning of its fill at 128 px, in glyph units."""
    margin = 4
    scale = _SKELETON_SIZE - 2 * margin
    pixels = np.column_stack([points[:, 0] * scale, (1.0 - points[:, 1]) * scale]) + margin
    size = math.ceil(max(pixels[:, 0].max(), _SKELETON_SIZE - margin)) + margin
    fill = _rasterize(pixels, nxt, size)
    rows, cols = np.nonzero(_thin(fill))
    return np.column_stack([(cols + 0.5 - margin) / scale, 1.0 - (rows + 0.5 - margin) / scale])


def _thin(image: np.ndarray) -> np.ndarray:
    """Zhang & Suen (1984) thinning of a boolean image to one-pixel-wide lines."""
    img = np.pad(image.astype(np.uint8), 1)
    changed = True
    while changed:
        changed = False
        for phase in (0, 1):
            p = img
            n = [
                p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:],
                p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2],
            ]  # fmt: skip
            neighbours = sum(x.astype(np.int16) for x in n)
            ring = [*n, n[0]]
            transitions = sum(
                ((ring[i] == 0) & (ring[i + 1] == 1)).astype(np.int16) for i in range(8)
            )
            if phase == 0:
                side = (n[0] * n[2] * n[4] == 0) & (n[2] * n[4] * n[6] == 0)
            else:
                side = (n[0] * n[2] * n[6] == 0) & (n[0] * n[4] * n[6] == 0)
            delete = (
                (p[1:-1, 1:-1] == 1)
                & (neighbours >= 2)
                & (neighbours <= 6)
                & (transitions == 1)
                & side
            )
            if delete.any():
                img[1:-1, 1:-1][delete] = 0
                changed = True
    return img[1:-1, 1:-1].astype(bool)


def _is_digit_glyph(face: FT2Font, digit: int) -> bool:
    """Whether the font maps the digit's character to a real digit glyph (not .notdef or a
    symbol that a TeX font keeps at that code point)."""
    index = face.get_char_index(ord(str(digit)))
    if index == 0:
        return False
    name = face.get_glyph_name(index).lower()
    if not name or name.startswith(("glyph", "gid", "index")):
        return True  # the font has no glyph names; trust the character map
    return name.startswith(_DIGIT_NAMES[digit]) or name in (
        f"uni{ord(str(digit)):04x}",
        f"u{ord(str(digit)):04x}",
    )


@lru_cache(maxsize=64)
def _font_glyphs(font: Path) -> tuple[tuple[_Glyph, ...], ...] | str:
    """Each digit's shapes in a font (the glyph, then handwriting-like variants of it), or
    why the font cannot be used. Cached: all the expensive work happens once per font."""
    try:
        face = FT2Font(str(font))
    except (OSError, RuntimeError, ValueError) as error:
        return f"cannot be read ({error})"
    missing = [d for d in range(10) if not _is_digit_glyph(face, d)]
    if missing:
        return f"has no glyph for digit(s) {', '.join(map(str, missing))}"
    outlines = [_outline(font, d) for d in range(10)]
    table = []
    for digit, polygons in enumerate(outlines):
        if polygons is None:
            return f"renders digit {digit} empty"
        styles = [polygons]
        for make in _VARIANTS.get(digit, ()):
            variant = make(polygons)
            if variant is not None:
                styles.append(variant)
        table.append(tuple(_glyph(p) for p in styles))
    if len({table[d][0].points.round(3).tobytes() for d in range(10)}) < 10:
        return "draws the same shape for different digits"
    return tuple(table)


def _resolve_font(name: str) -> Path:
    """A font option as a path: a file name or stem in matplotlib's font folder, or a path."""
    for candidate in (font_dir() / name, font_dir() / f"{name}.ttf", Path(name)):
        if candidate.is_file():
            return candidate
    available = ", ".join(sorted(p.stem for p in font_dir().glob("*.ttf")))
    raise ConfigError(f"unknown font {name!r}; use a .ttf path or one of: {available}")


@lru_cache(maxsize=1)
def default_fonts() -> tuple[Path, ...]:
    """matplotlib's fonts with ten usable digits (DejaVu Sans, Sans Mono and Serif, upright
    STIX General, Computer Modern sans and typewriter), minus those unlike handwriting."""
    return tuple(
        path
        for path in sorted(font_dir().glob("*.ttf"))
        if path.stem not in _UNLIKE_HANDWRITING and not isinstance(_font_glyphs(path), str)
    )


def _rasterize(points: np.ndarray, nxt: np.ndarray, size: int) -> np.ndarray:
    """Nonzero-winding fill of closed polygons (pixel units, y down; edge i runs from point i
    to point ``nxt[i]``), sampled at the centres of a ``size`` x ``size`` grid."""
    y0, y1 = points[:, 1], points[nxt, 1]
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(lo - 0.5), 0, size).astype(int)  # rows whose centre is in [lo, hi)
    last = np.clip(np.ceil(hi - 0.5), 0, size).astype(int)
    counts = last - first
    edge = np.repeat(np.arange(len(points)), counts)
    if edge.size == 0:
        return np.zeros((size, size), dtype=bool)
    row = first[edge] + np.arange(edge.size) - np.repeat(np.cumsum(counts) - counts, counts)
    x0, x1 = points[edge, 0], points[nxt[edge], 0]
    ya, yb = y0[edge], y1[edge]
    crossing = x0 + (row + 0.5 - ya) * (x1 - x0) / (yb - ya)
    column = np.clip(np.floor(crossing - 0.5).astype(int) + 1, 0, size)
    winding = np.zeros((size, size + 1), dtype=np.int32)
    np.add.at(winding, (row, column), np.where(yb > ya, 1, -1))
    return np.cumsum(winding, axis=1)[:, :size] != 0


def to_features(bitmap: np.ndarray) -> np.ndarray:
    """A binary 32x32 bitmap as optdigits features: on-pixels per 4x4 block, divided by 16."""
    blocks = bitmap.reshape(IMAGE_SHAPE[0], BLOCK, IMAGE_SHAPE[1], BLOCK).sum(axis=(1, 3))
    return blocks.reshape(N_FEATURES) / float(BLOCK * BLOCK)


class RenderedDigits(Source):
    """Font-rendered digits 0-9, distorted like handwriting and preprocessed like optdigits.

    Per row: a uniform digit; a font (or, with probability ``hand_share``, a built-in
    handwriting centre line); for font digits, with probability ``pen_share``, the glyph's
    centre line redrawn with a round pen instead of its outline. Then a power-law remap of
    x and y by up to ``proportion_jitter`` (moves the waist of an 8, the bar of a 4 ...),
    a shear and a rotation, an elastic warp, a 32-pixel-high box, strokes thickened or
    thinned until about ``ink`` of the box is inked, and 4x4 block counts / 16.
    ``render`` also returns the digit drawn in each row (the victim's answer is what the
    attack uses). Every random choice comes from the rng, so a seed fixes the rows, and rows
    are drawn one by one, so they do not depend on the batch size. The defaults were tuned by
    measuring rows against the lab's real digits, which a truly data-free thief cannot do.
    """

    name: ClassVar[str] = "rendered-digits"
    paper: ClassVar[str] = (
        "Data-free task-knowledge synthetic queries (Papernot et al. 2017; Orekondy et al. "
        "2019) with optdigits preprocessing (Alpaydin & Kaynak 1998)"
    )

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "elastic": [BOOL],
        "max_rotation": [Interval(float, 0.0, 90.0)],
        "max_shear": [Interval(float, 0.0, 1.0)],
        "elastic_alpha": [Interval(float, 0.0, 200.0)],
        "elastic_sigma": [Interval(float, 0.5, 16.0)],
        "proportion_jitter": [Interval(float, 0.0, 1.5)],
        "ink": [Interval(float, 0.1, 0.6)],
        "pen_share": [Interval(float, 0.0, 1.0)],
        "hand_share": [Interval(float, 0.0, 1.0)],
    }

    def __init__(
        self,
        fonts: Sequence[str] | str | None = None,
        elastic: bool = True,
        max_rotation: float = 5.0,
        max_shear: float = 0.12,
        elastic_alpha: float = 34.0,
        elastic_sigma: float = 4.0,
        proportion_jitter: float = 0.3,
        ink: float = 0.28,
        pen_share: float = 0.5,
        hand_share: float = 0.4,
    ) -> None:
        self.fonts = fonts
        self.elastic = elastic
        self.max_rotation = max_rotation
        self.max_shear = max_shear
        self.elastic_alpha = elastic_alpha
        self.elastic_sigma = elastic_sigma
        self.proportion_jitter = proportion_jitter
        self.ink = ink
        self.pen_share = pen_share
        self.hand_share = hand_share

    def check_task(self, task: Task, who: str) -> None:
        require_digit_images(task, who)

    def draw(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        require_digit_images(task, f"source {self.name!r}")
        return self.render(n, rng)[0]

    def render(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` rows, shape ``(n, 64)`` with values k/16, and the digit drawn in each."""
        self.validate_params()
        fonts = self._font_table()
        hand = _hand_glyphs()
        rows = np.empty((n, N_FEATURES))
        digits = np.empty(n, dtype=int)
        for k in range(n):  # row by row, so the rows do not depend on the batch size
            digit = digits[k] = rng.integers(10)
            if rng.random() < self.hand_share:
                styles = hand[digit]
            else:
                styles = fonts[rng.integers(len(fonts))][digit]
            glyph = styles[rng.integers(len(styles))]
            rows[k] = to_features(self._bitmap(glyph, rng))
        return rows, digits

    def _font_table(self) -> list[tuple[tuple[_Glyph, ...], ...]]:
        """The chosen fonts' digit shapes."""
        if self.fonts is None:
            if not default_fonts():
                raise ConfigError(f"no font with ten usable digits in {font_dir()}")
            return [_font_glyphs(p) for p in default_fonts()]  # type: ignore[misc]
        names = self.fonts.split(",") if isinstance(self.fonts, str) else self.fonts
        if not isinstance(names, Sequence) or not names:
            raise ConfigError(f"fonts must name at least one font, got {self.fonts!r}")
        table = []
        for name in names:
            if not isinstance(name, str | Path) or not str(name).strip():
                raise ConfigError(f"fonts must be font names or paths, got {name!r}")
            glyphs = _font_glyphs(_resolve_font(str(name).strip()))
            if isinstance(glyphs, str):
                raise ConfigError(f"font {name!r} {glyphs}")
            table.append(glyphs)
        return table

    def _bitmap(self, glyph: _Glyph, rng: np.random.Generator) -> np.ndarray:
        """One binary 32x32 bitmap of a glyph under random distortion."""
        pen = len(glyph.points) == 0 or rng.random() < self.pen_share
        source = glyph.skeleton if pen else glyph.points
        if self.proportion_jitter > 0:
            gx, gy = np.exp(rng.uniform(-self.proportion_jitter, self.proportion_jitter, 2))
            width = max(float(source[:, 0].max()), 1e-9)
            x = width * np.clip(source[:, 0] / width, 0.0, 1.0) ** gx
            source = np.column_stack([x, np.clip(source[:, 1], 0.0, 1.0) ** gy])
        angle = math.radians(rng.uniform(-self.max_rotation, self.max_rotation))
        shear = rng.uniform(-self.max_shear, self.max_shear)
        aspect = math.exp(rng.uniform(math.log(_ASPECT[0]), math.log(_ASPECT[1])))
        cos, sin = math.cos(angle), math.sin(angle)
        affine = np.array([[cos, -sin], [sin, cos]]) @ np.array([[aspect, shear], [0.0, 1.0]])
        points = source @ (np.diag([1.0, -1.0]) @ affine).T  # to image rows: y down
        if self.elastic and self.elastic_alpha > 0:
            low, high = points.min(axis=0), points.max(axis=0)
            points = self._warp((points - low) * (BITMAP / max(high - low)), rng)
        height = rng.uniform(*_HEIGHT)
        size = np.maximum(points.max(axis=0) - points.min(axis=0), 1e-9)
        width = size[0] * height / size[1]
        if width > BITMAP:
            height, width = height * BITMAP / width, float(BITMAP)
        scale = _SUPERSAMPLE
        canvas = (BITMAP + 2 * _MARGIN) * scale
        points = _fit_box(points, width * scale, height * scale) + _MARGIN * scale
        ink = rng.uniform(self.ink - _INK_JITTER, self.ink + _INK_JITTER) * (BITMAP * scale) ** 2
        if pen:
            fine = _pen(points, canvas, ink / (width * height * scale * scale))
        else:
            fine = _set_ink(_rasterize(points, glyph.nxt, canvas), ink)
        return _normalize(fine, height)

    def _warp(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Move points along a smooth random displacement field (Simard et al. 2003):
        uniform noise in [-1, 1] per pixel, Gaussian-smoothed, times alpha."""
        alpha = self.elastic_alpha * rng.uniform(0.5, 1.0)
        sigma = self.elastic_sigma * rng.uniform(0.8, 1.2)
        coords = [points[:, 1] - 0.5, points[:, 0] - 0.5]  # (row, column) of pixel centres
        shift = [
            ndimage.map_coordinates(
                ndimage.gaussian_filter(rng.uniform(-1, 1, (BITMAP, BITMAP)), sigma),
                coords,
                order=1,
                mode="nearest",
            )
            for _ in range(2)
        ]
        return points + alpha * np.column_stack(shift)


def _fit_box(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """Scale the outline's bounding box onto ``[0, width] x [0, height]``."""
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - low) / np.maximum(high - low, 1e-9) * [width, height]


def _set_ink(bitmap: np.ndarray, target: float) -> np.ndarray:
    """Thicken (or thin) strokes one pixel at a time until about ``target`` pixels are on."""
    step = 0
    while bitmap.sum() < target and step < 12:
        grown = ndimage.binary_dilation(bitmap, _CROSS if step % 2 == 0 else _SQUARE)
        if abs(grown.sum() - target) > abs(bitmap.sum() - target):
            break
        bitmap, step = grown, step + 1
    while bitmap.sum() > target * 1.1 and step > -4:
        thinned = ndimage.binary_erosion(bitmap, _CROSS, border_value=0)
        if thinned.sum() < 0.6 * bitmap.sum() or abs(thinned.sum() - target) > abs(
            bitmap.sum() - target
        ):
            break
        bitmap, step = thinned, step - 1
    return bitmap


def _normalize(fine: np.ndarray, height: float) -> np.ndarray:
    """Crop a bitmap to its ink's bounding box and resample that box, aspect ratio kept, to
    ``height`` pixels high (or 32 wide) centred in the 32x32 bitmap (a pixel is on when half
    of it is ink), as optdigits' preprocessing did."""
    rows, cols = np.flatnonzero(fine.any(axis=1)), np.flatnonzero(fine.any(axis=0))
    if rows.size == 0:
        return np.zeros((BITMAP, BITMAP), dtype=bool)
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    width = height * (right - left) / (bottom - top)
    if width > BITMAP:
        height, width = height * BITMAP / width, float(BITMAP)
    y = (np.arange(BITMAP) + 0.5 - (BITMAP - height) / 2) / height  # centre in [0, 1] of the box
    x = (np.arange(BITMAP) + 0.5 - (BITMAP - width) / 2) / width
    r = top + y * (bottom - top) - 0.5
    c = left + x * (right - left) - 0.5
    grid = np.meshgrid(r, c, indexing="ij")
    sampled = ndimage.map_coordinates(fine.astype(float), grid, order=1, mode="constant")
    inside = ((y >= 0) & (y <= 1))[:, None] & ((x >= 0) & (x <= 1))[None, :]
    return (sampled >= 0.5) & inside


def _pen(points: np.ndarray, canvas: int, density: float) -> np.ndarray:
    """Draw centre-line points with a round pen whose radius makes the ink cover about
    ``density`` of the drawing's bounding box."""
    marks = np.zeros((canvas, canvas), dtype=bool)
    cells = np.clip(np.floor(points).astype(int), 0, canvas - 1)
    marks[cells[:, 1], cells[:, 0]] = True
    if not marks.any():
        return marks
    distance = ndimage.distance_transform_edt(~marks)
    rows, cols = np.flatnonzero(marks.any(axis=1)), np.flatnonzero(marks.any(axis=0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    radii = np.arange(0.5, 16.0, 0.25)
    ink = np.searchsorted(np.sort(distance.ravel()), radii, side="right")
    cover = ink / ((h + 2 * radii) * (w + 2 * radii))
    radius = radii[np.argmin(np.abs(cover - density))]
    return distance <= radius


def _line(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Points along a straight pen stroke."""
    n = max(2, int(math.hypot(x1 - x0, y1 - y0) / 0.005))
    t = np.linspace(0.0, 1.0, n)[:, None]
    return np.array([x0, y0]) + t * np.array([x1 - x0, y1 - y0])


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float) -> np.ndarray:
    """Points along an elliptical pen stroke from angle ``start`` to ``stop`` (degrees)."""
    n = max(2, int(abs(stop - start) / 360 * 2 * math.pi * max(rx, ry) / 0.005))
    t = np.radians(np.linspace(start, stop, n))
    return np.column_stack([cx + rx * np.cos(t), cy + ry * np.sin(t)])


def _curve(*control: tuple[float, float]) -> np.ndarray:
    """Points along a cubic Bezier pen stroke."""
    p = np.array(control, dtype=float)
    t = np.linspace(0.0, 1.0, 200)[:, None]
    return (
        (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
    )


def _hand_strokes() -> dict[int, list[list[np.ndarray]]]:
    """Centre lines of handwritten digit shapes (x right, y up, height 1), a few styles each."""
    top2 = _arc(0.3, 0.72, 0.27, 0.27, 150, -30)
    loop9 = _arc(0.28, 0.73, 0.26, 0.27, 0, 360)
    return {
        0: [[_arc(0.3, 0.5, 0.28, 0.5, 0, 360)], [_arc(0.3, 0.5, 0.24, 0.5, 100, 480)]],
        1: [
            [_line(0.35, 1, 0.3, 0)],
            [_line(0.05, 0.6, 0.35, 1), _line(0.35, 1, 0.35, 0)],
            [_line(0.1, 0.75, 0.35, 1), _line(0.35, 1, 0.35, 0), _line(0.1, 0, 0.6, 0)],
        ],
        2: [
            [top2, _line(0.534, 0.585, 0.02, 0.0), _line(0.02, 0.0, 0.6, 0.0)],
            [
                top2,
                _curve((0.534, 0.585), (0.4, 0.35), (0.05, 0.2), (0.05, 0.05)),
                _curve((0.05, 0.05), (0.05, 0.15), (0.3, 0.0), (0.6, 0.02)),
            ],
        ],
        3: [
            [_arc(0.28, 0.75, 0.25, 0.25, 150, -90), _arc(0.28, 0.27, 0.29, 0.27, 90, -150)],
            [
                _line(0.05, 1, 0.55, 1),
                _line(0.55, 1, 0.25, 0.58),
                _arc(0.28, 0.29, 0.29, 0.29, 95, -150),
            ],
        ],
        4: [
            [_line(0.45, 0, 0.45, 1), _line(0.45, 1, 0.0, 0.3), _line(0.0, 0.3, 0.6, 0.3)],
            [_line(0.05, 1, 0.02, 0.4), _line(0.02, 0.4, 0.6, 0.4), _line(0.45, 0.85, 0.45, 0)],
        ],
        5: [
            [
                _line(0.55, 1, 0.1, 1),
                _line(0.1, 1, 0.07, 0.55),
                _arc(0.3, 0.3, 0.28, 0.3, 140, -150),
            ],
        ],
        6: [
            [
                _curve((0.5, 1), (0.2, 0.85), (0.02, 0.55), (0.03, 0.28)),
                _arc(0.3, 0.28, 0.27, 0.28, 180, 540),
            ],
        ],
        7: [
            [_line(0.0, 1, 0.6, 1), _line(0.6, 1, 0.2, 0)],
            [_line(0.0, 1, 0.6, 1), _line(0.6, 1, 0.2, 0), _line(0.2, 0.5, 0.55, 0.5)],
        ],
        8: [[_arc(0.3, 0.76, 0.22, 0.24, 0, 360), _arc(0.3, 0.26, 0.28, 0.26, 0, 360)]],
        9: [
            [loop9, _line(0.54, 0.73, 0.5, 0)],
            [loop9, _curve((0.54, 0.73), (0.56, 0.3), (0.45, 0.0), (0.1, 0.05))],
        ],
    }


@lru_cache(maxsize=1)
def _hand_glyphs() -> tuple[tuple[_Glyph, ...], ...]:
    """The handwritten shapes as centre-line-only glyphs, bounding box at the origin, height 1."""
    table = []
    for digit in range(10):
        styles = []
        for strokes in _hand_strokes()[digit]:
            points = np.concatenate(strokes)
            low, high = points.min(axis=0), points.max(axis=0)
            skeleton = (points - low) / (high[1] - low[1])
            styles.append(_Glyph(np.empty((0, 2)), np.empty(0, dtype=int), skeleton))
        table.append(tuple(styles))
    return tuple(table)
