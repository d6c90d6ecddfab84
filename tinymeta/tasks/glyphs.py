r"""Glyphs: an endless, generated family of Omniglot-like characters (no download needed).

A class is a character: 1 to 4 pen strokes, each a random walk of 5 control
points drawn as a blend of a smooth Bezier curve and the corner-keeping
polyline, strokes often starting on an earlier stroke (so characters are
connected, like handwriting). A drawing of the class perturbs it like a new
writer would: every control point jittered, each stroke shifted, the whole
character rotated, scaled, sheared and moved, the pen thickness varied.

Class ``c`` of family ``seed`` is a pure function of ``(seed, c)`` (and the
``Style``): its generator is the ``c``-th child of ``np.random.SeedSequence(seed)``
(``SeedSequence(seed, spawn_key=(c,))``, what ``SeedSequence.spawn`` hands out), and
drawing ``j`` is row ``j`` of one block of normals drawn from it, so it does
not depend on how many classes or drawings were asked for.

Rendering (vectorised, separable): a stroke sampled at points
:math:`(x_p, y_p)` with arc-length weights :math:`w_p` deposits

.. math::
    S(y, x) = \sum_p w_p\, e^{-(x - x_p)^2 / 2\sigma^2}\, e^{-(y - y_p)^2 / 2\sigma^2}
            = (G_y^\top \operatorname{diag}(w)\, G_x)_{yx},
    \qquad w_p = \frac{|\Delta s_p|}{\sqrt{2\pi}\,\sigma},\qquad
    \mathrm{ink} = 1 - e^{-\gamma S}

so a straight stroke has :math:`S = 1` on its centre line, falling off as a
Gaussian of width :math:`\sigma` (pixels) across it: one batched matrix
product per chunk of drawings.

Hardness, measured with a 1-nearest-neighbour classifier on raw pixels
(5-way 1-shot / 5-way 5-shot / 20-way 1-shot): glyphs 41 / 58 / 19 %,
Omniglot 28x28 nearest 38 / 54 / 18 %, Lanczos 44 / 65 / 25 % (chance 20 / 20
/ 5 %). Characters have Omniglot's median extent (18 pixels) and strokes about
its width; 5.7 % of pixels are ink against Omniglot's 7.8 %.
``tests/test_glyphs.py`` keeps the 1-NN score between chance and trivial.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from .. import validation as val
from .images import INK, SIDE, ImageClasses, ImageSplit

GLYPH_SEED = 0
MAX_STROKES = 4
POINTS = 5  # control points per stroke
SAMPLES = 64  # points per stroke: spacing < 1.5 sigma on 99 % of strokes, so no beading
STROKE_COUNT_P = (0.15, 0.35, 0.33, 0.17)  # P(1..4 strokes)
_CHUNK = 2048  # drawings rendered per batched matrix product
_N_NORMALS = MAX_STROKES * POINTS * 2 + MAX_STROKES * 2 + 6 + 1  # per drawing, see _perturb


@dataclass(frozen=True)
class Style:
    """How far a drawing strays from its class (unit square = the 28x28 image).

    The defaults were tuned by eye and by a pixel 1-nearest-neighbour baseline
    (see the module docstring: about as hard as Omniglot at 28x28).
    """

    jitter: float = 0.05  # std of each control point's displacement
    stroke_shift: float = 0.04  # std of each stroke's displacement
    rotation: float = 0.15  # std of the rotation, radians
    log_scale: float = 0.10  # std of log scale, per axis
    shear: float = 0.10  # std of the shear factor
    translation: float = 0.05  # std of the displacement of the whole character
    log_thickness: float = 0.15  # std of log pen width
    gain: float = 2.5  # gamma in ink = 1 - exp(-gamma S)

    def __post_init__(self):
        for name in ("jitter", "stroke_shift", "rotation", "log_scale", "shear", "translation",
                     "log_thickness"):
            val.check_float(getattr(self, name), name, nonnegative=True)
        val.check_float(self.gain, "gain", positive=True)


def classes(n_classes: int, first: int = 0, n_drawings: int = 20, seed: int = GLYPH_SEED,
            style: Style = Style()) -> ImageClasses:
    """Classes ``first .. first + n_classes - 1`` of family ``seed``, ``n_drawings`` drawings each.

    Returns
    -------
    ImageClasses with images of shape ``(n_classes, n_drawings, 28, 28)`` uint8
    (0 paper, 255 ink) and names ``"glyph-<seed>-<c>"``.
    """
    n_classes = val.check_int(n_classes, "n_classes", minimum=1)
    first = val.check_int(first, "first", minimum=0)
    n_drawings = val.check_int(n_drawings, "n_drawings", minimum=1)
    seed = val.check_int(seed, "seed", minimum=0)
    if not isinstance(style, Style):
        raise TypeError(f"style must be a glyphs.Style, got {type(style).__name__}")
    shapes, normals = [], []
    for c in range(first, first + n_classes):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(c,)))
        shapes.append(_character(rng))
        normals.append(rng.standard_normal((n_drawings, _N_NORMALS)))
    points, smooth, active, width = (np.repeat(np.stack([s[i] for s in shapes]), n_drawings, axis=0)
                                     for i in range(4))
    z = np.concatenate(normals)
    images = np.empty((n_classes * n_drawings, SIDE, SIDE), dtype=np.uint8)
    n_active = active.sum(axis=1)
    order = np.argsort(n_active, kind="stable")  # chunks of equal stroke counts skip the unused strokes
    for i in range(0, len(z), _CHUNK):
        part = order[i:i + _CHUNK]
        used = slice(0, int(n_active[part].max()))
        moved, pen = _perturb(points[part], width[part], z[part], style)
        images[part] = _render(moved[:, used], pen, smooth[part, used], active[part, used], style.gain)
    names = np.array([f"glyph-{seed}-{c:06d}" for c in range(first, first + n_classes)])
    return ImageClasses(images.reshape(n_classes, n_drawings, SIDE, SIDE), names)


def glyph_split(n_train: int = 1200, n_test: int = 423, n_validation: int = 0, n_drawings: int = 20,
                seed: int = GLYPH_SEED, style: Style = Style()) -> ImageSplit:
    """Disjoint glyph classes shaped like the Omniglot MAML split (1200 train, 423 test by default).

    Classes ``0 .. n_train-1`` meta-train, the next ``n_validation`` validate, the
    next ``n_test`` test. No rotations: the family has as many classes as asked.
    """
    n_train = val.check_int(n_train, "n_train", minimum=1)
    n_test = val.check_int(n_test, "n_test", minimum=1)
    n_validation = val.check_int(n_validation, "n_validation", minimum=0)
    every = classes(n_train + n_validation + n_test, 0, n_drawings, seed, style)
    validation = every.subset(range(n_train, n_train + n_validation)) if n_validation else None
    test = every.subset(range(n_train + n_validation, every.n_classes))
    return ImageSplit(every.subset(range(n_train)), test, validation,
                      f"glyphs seed={seed} n_train={n_train} n_validation={n_validation} n_test={n_test}")


def _curve_matrices() -> tuple:
    """``(Bezier, polyline)``: (SAMPLES, POINTS) matrices mapping control points to curve samples."""
    t = np.linspace(0.0, 1.0, SAMPLES)[:, None]
    i = np.arange(POINTS)[None, :]
    n = POINTS - 1
    bezier = np.array([comb(n, k) for k in range(POINTS)]) * t**i * (1 - t) ** (n - i)  # Bernstein basis
    hat = np.maximum(0.0, 1.0 - np.abs(t * n - i))  # piecewise-linear interpolation
    return bezier, hat


_BEZIER, _POLYLINE = _curve_matrices()


def _character(rng: np.random.Generator) -> tuple:
    """One class: control points (MAX_STROKES, POINTS, 2) in the unit square, smoothness, mask, pen width."""
    n_strokes = 1 + rng.choice(MAX_STROKES, p=STROKE_COUNT_P)
    start = rng.uniform(0.1, 0.9, (MAX_STROKES, 2))
    turns = rng.normal(0.0, 0.9, (MAX_STROKES, POINTS - 1))  # radians, at each control point
    heading = rng.uniform(0.0, 2 * np.pi, (MAX_STROKES, 1)) + np.cumsum(turns, axis=1)
    length = rng.uniform(0.08, 0.3, (MAX_STROKES, POINTS - 1, 1))
    steps = length * np.stack([np.cos(heading), np.sin(heading)], -1)
    walk = np.concatenate([np.zeros((MAX_STROKES, 1, 2)), np.cumsum(steps, axis=1)], axis=1)
    attach = rng.random(MAX_STROKES) < 0.6  # start on an earlier stroke's control point
    anchor = rng.integers(0, POINTS, MAX_STROKES)
    points = np.empty((MAX_STROKES, POINTS, 2))
    for s in range(MAX_STROKES):
        points[s] = (points[s - 1, anchor[s]] if s and attach[s] else start[s]) + walk[s]
    smooth = rng.uniform(0.0, 1.0, MAX_STROKES)
    active = np.arange(MAX_STROKES) < n_strokes
    lo, hi = points[active].min(axis=(0, 1)), points[active].max(axis=(0, 1))
    size = rng.uniform(0.5, 0.68)  # the character's larger side, as a fraction of the image
    points = (points - (lo + hi) / 2) * (size / max(float((hi - lo).max()), 1e-3)) + 0.5
    width = rng.uniform(0.35, 0.5)  # sigma of the pen, pixels
    return points, smooth, active, width


def _perturb(points, width, z, style: Style) -> tuple:
    """A new writer's version of each character: (B, MAX_STROKES, POINTS, 2) points, (B,) pen widths."""
    B = len(points)
    n_jit, n_shift = MAX_STROKES * POINTS * 2, MAX_STROKES * 2
    points = points + style.jitter * z[:, :n_jit].reshape(B, MAX_STROKES, POINTS, 2)
    points = points + style.stroke_shift * z[:, n_jit:n_jit + n_shift].reshape(B, MAX_STROKES, 1, 2)
    angle, log_sx, log_sy, shear, dx, dy, log_w = z[:, n_jit + n_shift:].T
    c, s = np.cos(style.rotation * angle), np.sin(style.rotation * angle)
    sx, sy, k = np.exp(style.log_scale * log_sx), np.exp(style.log_scale * log_sy), style.shear * shear
    # A = rotation @ shear @ diag(sx, sy), acting on points relative to the image centre
    A = np.stack([np.stack([c * sx, (c * k - s) * sy], -1), np.stack([s * sx, (s * k + c) * sy], -1)], -2)
    shift = style.translation * np.stack([dx, dy], -1)
    points = np.einsum("bij,bsmj->bsmi", A, points - 0.5) + 0.5 + shift[:, None, None, :]
    return points, width * np.exp(style.log_thickness * log_w)


def _render(points, width, smooth, active, gain: float) -> np.ndarray:
    """(B, 28, 28) uint8 ink of the strokes, by the separable Gaussian deposit of the module docstring."""
    lam = smooth[:, :, None, None]
    curve = (lam * _BEZIER + (1 - lam) * _POLYLINE) @ points  # (B, S, T, 2), (x, y) in the unit square
    curve = curve * SIDE - 0.5  # pixel centres are 0..27
    mid = ((curve[:, :, 1:] + curve[:, :, :-1]) / 2).reshape(len(curve), -1, 2)  # (B, P, 2) segment midpoints
    sigma = width[:, None, None]
    w = np.linalg.norm(np.diff(curve, axis=2), axis=-1) * active[:, :, None] / (np.sqrt(2 * np.pi) * sigma)
    grid = np.arange(SIDE, dtype=np.float32)
    scale = (-0.5 / sigma**2).astype(np.float32)
    gx, gy = (_gauss(grid, mid[..., i:i + 1].astype(np.float32), scale) for i in (0, 1))  # (B, P, 28)
    gy *= w.reshape(len(w), -1, 1).astype(np.float32)
    S = np.matmul(gy.transpose(0, 2, 1), gx)  # (B, 28 rows = y, 28 columns = x)
    return np.rint(INK * (1 - np.exp(-gain * S))).astype(np.uint8)


def _gauss(grid, centre, scale):
    """exp(scale * (grid - centre)**2), computed in place: (B, P, 28) float32."""
    out = np.subtract(grid, centre)
    np.square(out, out=out)
    np.multiply(out, scale, out=out)
    return np.exp(out, out=out)
