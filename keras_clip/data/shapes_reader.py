"""Read the objects of a captioned-shapes image back from its pixels, and check an image against
its caption: the prompt-fidelity checker of the DALL·E trained on `keras_clip.data.shapes`.

How an image is read (`read_objects`):

1. Background: the per-channel median of the border pixels (the renderer keeps every object at
   least 2% of the side away from the border, so the border is background; a generated image
   with an off-grey background still works).
2. Foreground: pixels more than ``threshold`` (RGB distance, 0–255 scale; default 80) from the
   background. The palette colours are 207–284 from the renderer's background, so a pixel needs
   roughly a third of an object's coverage to count.
3. Objects: 8-connected components of the foreground (``scipy.ndimage.label`` when SciPy is
   installed, else an equivalent numpy labelling). Components smaller than ``min_area`` pixels
   are specks and dropped: by default 32 px at 64 px, scaled with the image area (8 px at 32 px);
   the smallest rendered object, a small star, covers about 139 px at 64 px. The renderer lets
   two large objects touch (each sits in its own half, but a large one reaches the middle
   line: 2 of the 2,000 test images at 64 px, 14 at 32 px), so a component that no template explains well (score < 0.9) is eroded until it falls
   apart at its neck (at most 4 times at 64 px); the pieces grown back over it replace it when
   each of them scores at least ``min_score`` and better than the whole.
4. Colour: the palette colour (``PALETTE``) nearest to the median of the component's more
   saturated half (its pixels at least as far from the background as its median pixel), or
   None when that median is more than ``max_colour_distance`` (default 80) from every palette
   colour (palette colours are ≥ 75 apart; the renderer's jitter moves a colour ≤ 17).
5. Shape and size: the object's coverage (each pixel's share of the way from the background
   to the object's colour, 0–1, over the component and the one-pixel ring of background around
   it) is compared with templates drawn with the renderer's own geometry (`shapes.shape_sdf`,
   the same anti-aliasing) for the 5 shapes × 2 sizes, each first centred where its own
   centroid meets the component's, then the best (and up to 2 more within 0.1 of it) moved by
   up to ±0.5 px in quarter-pixel steps. The score is the soft IoU ``Σ min(a, b) / Σ max(a, b)`` of coverage and template;
   the best template names shape and size. Below ``min_score`` (default 0.6) the component is
   no clean shape and shape and size are None (a disc filled 60% with dots scores ≈ 0.5).
   At 64 px the renderer's own objects score 0.95–1.0 with their template, at most 0.82 with
   any other (a small circle against a large diamond; a circle against a square of its size:
   0.78).

`check_image` then compares what was read with the caption (parsed with the renderer's own
vocabulary by `caption_objects`): the same number of objects, each with the caption's colour,
shape and size, and for two objects the caption's relation between their centres.

Measured on the renderer's own images (tests/test_shapes_reader.py asserts ≥ 99% and prints
the rates): 1,000 "val" + 1,000 "heldout" images (2,983 objects, half the images with two) are
all read correctly at 64 px and at 32 px.

Example:
    >>> from keras_clip.data.shapes import generate_shapes
    >>> d = generate_shapes(2, split="val", seed=0)
    >>> [(o["colour"], o["shape"], o["size"]) for o in read_objects(d["images"][0])]
    [('yellow', 'square', 'large')]
    >>> check_image(d["images"][0], "a large yellow square")["correct"]
    True
"""

import functools
import re

import numpy as np

from keras_clip.data.shapes import (COLOURS, PALETTE, RADIUS, RELATIONS, SHAPES,
                                    SIZES, shape_sdf)

__all__ = ["read_objects", "caption_objects", "check_image", "label_components", "DEFAULT_THRESHOLD",
           "MIN_AREA_AT_64", "DEFAULT_MIN_SCORE", "DEFAULT_MAX_COLOUR_DISTANCE"]

DEFAULT_THRESHOLD = 80.0  # RGB distance from the background, 0–255 scale
MIN_AREA_AT_64 = 32  # pixels at 64 px; scaled with the image area
DEFAULT_MIN_SCORE = 0.6  # soft IoU with the best template
DEFAULT_MAX_COLOUR_DISTANCE = 80.0  # RGB distance to the nearest palette colour

_MIN_SIDE = 16  # the renderer's smallest image size
_TEMPLATES = tuple((shape, size) for shape in SHAPES for size in SIZES)
_EXTENT = 1.3  # every shape lies within 1.3 radii of its centre (triangle corners: 1.28)
_PHASES = 4  # templates are placed at quarter-pixel positions
_SPLIT_BELOW = 0.9  # a component scoring less is tried as two objects joined by a neck
_MAX_ERODE = 4  # erosions (at 64 px, scaled with the size) to part two touching objects
_REFINE_WITHIN = 0.1  # templates refined: the 3 best, if within this of the best first score


# ----------------------------------------------------------------------------------------------
# Reading

def read_objects(image, threshold=DEFAULT_THRESHOLD, min_area=None, min_score=DEFAULT_MIN_SCORE,
                 max_colour_distance=DEFAULT_MAX_COLOUR_DISTANCE):
    """The objects of one captioned-shapes image, read from its pixels (see the module's doc).

    Args:
        image: one square image (S, S, 3), S >= 16: uint8, or float in [0, 1].
        threshold: RGB distance (0–255 scale) from the background above which a pixel is
            foreground.
        min_area: components with fewer pixels are specks and dropped; default
            ``MIN_AREA_AT_64 · (S / 64)²`` rounded (32 px at 64 px, 8 px at 32 px).
        min_score: soft IoU with the best template below which shape and size are None.
        max_colour_distance: RGB distance to the nearest palette colour above which the colour
            is None.

    Returns:
        list of dicts, one per object in the raster order of its component's first pixel
        (pieces of a split component: of their eroded cores): ``"colour"`` (a name of
        ``COLOURS`` or None), ``"shape"`` (``SHAPES`` or None), ``"size"`` (``SIZES`` or None),
        ``"center"`` ((x, y) in image fractions, y down: the best template's centre, or the
        coverage centroid when there is no shape), ``"area"`` (int, pixels of the component),
        ``"score"`` (float, the best template's soft IoU in [0, 1]).

    Raises:
        TypeError: a dtype other than uint8 or floating.
        ValueError: not one square (S, S, 3) image with S >= 16, a float image outside [0, 1]
            or not finite, or a negative argument.
    """
    x = _as_pixels(image)
    size = x.shape[0]
    if min_area is None:
        min_area = int(round(MIN_AREA_AT_64 * (size / 64.0) ** 2))
    for name, value in (("threshold", threshold), ("min_area", min_area),
                        ("min_score", min_score), ("max_colour_distance", max_colour_distance)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    min_area = max(int(np.ceil(min_area)), 1)

    border = np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(x - background, axis=-1)
    labels, count = label_components(distance > threshold)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    reader = _Reader(x, background, distance, labels, min_score, max_colour_distance)
    objects = []
    for index in range(1, count + 1):
        if areas[index] < min_area:
            continue
        mask = labels == index
        whole = reader.read(mask)
        if whole["score"] < _SPLIT_BELOW:
            pieces = [reader.read(piece) for piece in _split(mask, min_area)]
            if len(pieces) > 1 and min(p["score"] for p in pieces) >= max(min_score,
                                                                          whole["score"]):
                objects += pieces
                continue
        objects.append(whole)
    return objects


def _as_pixels(image):
    """float32 (S, S, 3) on the 0–255 scale, after checking shape, dtype and range."""
    x = np.asarray(image)
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"image must be uint8 or float in [0, 1], got dtype {x.dtype}")
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"image must be one (S, S, 3) RGB image, got shape {x.shape}")
    if x.shape[0] != x.shape[1]:
        raise ValueError(f"image must be square (the shapes renderer's), got shape {x.shape}")
    if x.shape[0] < _MIN_SIDE:
        raise ValueError(f"image must be at least {_MIN_SIDE} px, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("float image has NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"float image must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                         "(pass uint8 for 0–255 pixels)")
    return np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0


def label_components(mask):
    """8-connected components of a boolean (H, W) mask: (int32 labels, count).

    Label 0 is the background; components are numbered 1… in raster order of their first pixel
    (as ``scipy.ndimage.label``, used when SciPy is installed).
    """
    mask = np.asarray(mask, bool)
    try:
        from scipy import ndimage
    except ImportError:
        return _label_numpy(mask)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return labels.astype(np.int32), int(count)


def _label_numpy(mask):
    """`label_components` without SciPy: min-index propagation with pointer jumping."""
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(h * w).reshape(h, w), big)
    while True:
        padded = np.pad(lab, 1, constant_values=big)
        low = lab
        for dy in range(3):
            for dx in range(3):
                low = np.minimum(low, padded[dy:dy + h, dx:dx + w])
        low = np.where(mask, low, big)
        flat = np.append(low.ravel(), big)
        low = np.where(mask, flat[low], big)  # jump: take the label of the pixel pointed at
        if np.array_equal(low, lab):
            break
        lab = low
    roots, labels = np.unique(lab, return_inverse=True)
    labels = labels.reshape(h, w).astype(np.int32) + 1
    count = len(roots) - (roots[-1] == big)
    labels[~mask] = 0
    return labels, int(count)


def _erode(mask):
    return _morph(mask, np.logical_and)


def _dilate(mask):
    return _morph(mask, np.logical_or)


def _morph(mask, combine):
    """3×3 erosion (combine = and) or dilation (or) of a boolean mask; outside counts False."""
    h, w = mask.shape
    padded = np.pad(mask, 1)
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            combine(out, padded[dy:dy + h, dx:dx + w], out=out)
    return out


def _split(mask, min_area):
    """Pieces of a component that are joined by a thin neck (the renderer lets two large objects
    touch: each sits in its own half, but a large one reaches the middle line). Erode up to
    ``_MAX_ERODE · S / 64`` times until it falls apart into ≥ 2 pieces of at least
    ``min_area / 4`` pixels, then grow the pieces back over the component (each pixel to the
    piece that reaches it first). Returns a list of boolean masks ([mask] if it does not split).
    """
    size = mask.shape[0]
    eroded = mask
    for _ in range(max(1, int(round(_MAX_ERODE * size / 64)))):
        eroded = _erode(eroded)
        labels, count = label_components(eroded)
        if count < 2:
            if count == 0:
                break
            continue
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        big = [i for i in range(1, count + 1) if areas[i] >= max(min_area / 4, 1)]
        if len(big) < 2:
            continue
        owner = np.where(np.isin(labels, big), labels, 0)
        while True:
            h, w = owner.shape
            padded = np.pad(owner, 1)
            reach = owner.copy()
            for dy in range(3):
                for dx in range(3):
                    reach = np.maximum(reach, padded[dy:dy + h, dx:dx + w])
            grown = np.where(mask & (owner == 0), reach, owner)
            if np.array_equal(grown, owner):
                break
            owner = grown
        return [owner == i for i in big]
    return [mask]


class _Reader:
    """Reads one component (a boolean mask) of an image: colour, shape, size, centre, score."""

    def __init__(self, x, background, distance, labels, min_score, max_colour_distance):
        self.x, self.background, self.distance = x, background, distance
        self.foreground = labels > 0
        self.min_score, self.max_colour_distance = min_score, max_colour_distance
        self.size = x.shape[0]
        self.templates, self.pad = _templates(self.size)

    def read(self, mask):
        size, x, background = self.size, self.x, self.background
        d = self.distance[mask]
        core = x[mask][d >= np.median(d)]
        colour_rgb = np.median(core, axis=0)
        palette_distance = np.linalg.norm(PALETTE.astype(np.float32) - colour_rgb, axis=1)
        colour = (COLOURS[int(palette_distance.argmin())]
                  if palette_distance.min() <= self.max_colour_distance else None)

        # Coverage: each pixel's share of the way from the background to the object's colour,
        # over the component and its one-pixel ring of background (anti-aliased edges fall below
        # the threshold), not over other foreground.
        direction = colour_rgb - background
        norm2 = float(direction @ direction)
        keep = mask | (_dilate(mask) & ~self.foreground)
        if norm2 < 1.0:  # the background's own colour: nothing to project on
            coverage = mask.astype(np.float32)
        else:
            coverage = np.clip((x - background) @ (direction / norm2), 0.0, 1.0)
        coverage = np.where(keep, coverage, 0.0).astype(np.float32)
        total = float(coverage.sum())
        if total < 1e-3:  # no pixel leans towards the median colour (e.g. a mixed-up blob)
            coverage, total = mask.astype(np.float32), float(mask.sum())
        ys, xs = np.nonzero(keep)
        weights = coverage[ys, xs]
        cx = float(weights @ (xs + 0.5)) / total  # pixels
        cy = float(weights @ (ys + 0.5)) / total

        # Stage 1: every template with its own centroid on the component's; stage 2: the best 3
        # within 0.1 of the best, moved by up to ±0.5 px in quarter-pixel steps. Centres snap
        # to quarter pixels.
        padded = np.pad(coverage, self.pad)
        starts = np.array([[cx - ox * RADIUS[sz] * size, cy - oy * RADIUS[sz] * size]
                           for (ox, oy), sz in ((_centroid_offset(sh), sz)
                                                for sh, sz in _TEMPLATES)])
        first = self._scores(padded, total, np.arange(len(_TEMPLATES)), starts)
        top = np.argsort(-first, kind="stable")[:3]
        top = top[first[top] >= first[top[0]] - _REFINE_WITHIN]
        steps = np.arange(-2, 3) / _PHASES
        offsets = np.stack(np.meshgrid(steps, steps), -1).reshape(-1, 2)
        which = np.repeat(top, len(offsets))
        centres = starts[which] + np.tile(offsets, (len(top), 1))
        second = self._scores(padded, total, which, centres)
        best = int(np.argmax(second))
        score = float(second[best])
        shape, size_name = _TEMPLATES[which[best]] if score >= self.min_score else (None, None)
        centre = np.round(centres[best] * _PHASES) / _PHASES / size
        return {"colour": colour, "shape": shape, "size": size_name,
                "center": ((float(centre[0]), float(centre[1])) if shape is not None
                           else (cx / size, cy / size)),
                "area": int(mask.sum()), "score": score}

    def _scores(self, padded, total, which, centres):
        """Soft IoU of coverage with templates ``which`` centred at ``centres`` (pixels)."""
        side = self.templates.shape[-1]
        q = np.round((centres - side / 2) * _PHASES).astype(np.int64)  # quarter pixels
        origin, phase = np.divmod(q, _PHASES)  # patch origin (x, y) in pixels; phase (x, y)
        origin = np.clip(origin + self.pad, 0, padded.shape[0] - side)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (side, side))
        crops = windows[origin[:, 1], origin[:, 0]]  # (K, side, side)
        t = self.templates[which, phase[:, 1], phase[:, 0]]
        inter = np.minimum(crops, t).sum(axis=(1, 2))
        covered = crops.sum(axis=(1, 2))
        union = np.maximum(crops, t).sum(axis=(1, 2)) + (total - covered)
        return inter / np.maximum(union, 1e-6)


@functools.lru_cache(maxsize=4)
def _templates(size):
    """Coverage of every template at every quarter-pixel phase: float32 (10, 4, 4, P, P) and the
    padding P that keeps a patch inside the padded image; a patch's centre is at
    (P/2 + phase_x / 4, P/2 + phase_y / 4) pixels from its corner."""
    side = 2 * int(np.ceil(_EXTENT * RADIUS["large"] * size + 2.5))
    pixel = np.arange(side, dtype=np.float32) + 0.5
    phase = np.arange(_PHASES, dtype=np.float32) / _PHASES
    out = np.empty((len(_TEMPLATES), _PHASES, _PHASES, side, side), np.float32)
    for t, (shape, size_name) in enumerate(_TEMPLATES):
        r = np.float32(RADIUS[size_name] * size)  # pixels
        u = (pixel[None, :] - side / 2 - phase[:, None]) / r  # (phase_x, x)
        v = (pixel[None, :] - side / 2 - phase[:, None]) / r  # (phase_y, y)
        d = shape_sdf(shape, u[None, :, None, :], v[:, None, :, None])  # (py, px, y, x)
        out[t] = np.clip(0.5 - d * r, 0.0, 1.0)
    out.setflags(write=False)
    return out, side


@functools.lru_cache(maxsize=None)
def _centroid_offset(shape):
    """(x, y) of the shape's area centroid relative to its centre, in radii."""
    t = (np.arange(600) + 0.5) / 600 * 2.6 - 1.3
    inside = shape_sdf(shape, t[None, :], t[:, None]) < 0
    ys, xs = np.nonzero(inside)
    return float(t[xs].mean()), float(t[ys].mean())


# ----------------------------------------------------------------------------------------------
# Captions

_OBJECT = (rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")
_CAPTION = re.compile(rf"{_OBJECT}(?: ({'|'.join(RELATIONS)}) {_OBJECT})?")


def caption_objects(caption):
    """The objects a shapes caption asks for, parsed with the renderer's vocabulary.

    Accepts the renderer's captions ("a large red circle", "a small blue star above a large
    green square"), ignoring case, surrounding spaces and a final full stop.

    Returns:
        ``{"objects": [{"colour", "shape", "size"}, ...] (1 or 2), "relation": one of
        RELATIONS (where the first object is relative to the second) or None}``.

    Raises:
        ValueError naming the caption when it is not one the renderer could have written.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a str, got {type(caption).__name__} ({caption!r})")
    text = " ".join(caption.strip().lower().removesuffix(".").split())
    m = _CAPTION.fullmatch(text)
    if m is None:
        raise ValueError(
            f"caption {caption!r} is not a shapes caption: expected 'a <size> <colour> <shape>' "
            f"optionally followed by '<relation> a <size> <colour> <shape>', with sizes {SIZES}, "
            f"colours {COLOURS}, shapes {SHAPES}, relations {RELATIONS}")
    g = m.groups()
    objects = [{"size": g[0], "colour": g[1], "shape": g[2]}]
    if g[3] is not None:
        objects.append({"size": g[4], "colour": g[5], "shape": g[6]})
    return {"objects": objects, "relation": g[3]}


# ----------------------------------------------------------------------------------------------
# Checking

_ATTRIBUTES = ("colour", "shape", "size")


def check_image(image, caption, **read_options):
    """Does the image show what the caption asks for, read from its pixels?

    Correct when `read_objects` finds exactly as many objects as the caption describes, each
    one with the caption's colour, shape and size (the two objects of a two-object caption may
    be found in either order), and, for two objects, the caption's relation holds between their
    centres: "to the left of" / "to the right of" compare x, "above" / "below" compare y
    (y grows downward), first object relative to the second.

    Args:
        image: as `read_objects` (one square (S, S, 3) uint8 or float [0, 1] image).
        caption: a shapes caption (see `caption_objects`).
        **read_options: passed to `read_objects` (threshold, min_area, min_score,
            max_colour_distance).

    Returns:
        dict: ``"correct"`` (bool); ``"error"`` (None when correct, else the failure's kind:
        "no object", "count", "unreadable" (an object with no colour or no clean shape), the
        attributes that differ joined by "+" (e.g. "colour", "shape+size"), or "relation");
        ``"reason"`` (str, readable); ``"objects"`` (what `read_objects` found);
        ``"expected"`` (`caption_objects(caption)`).

    Raises:
        ValueError: the caption does not parse; the errors of `read_objects`.
    """
    expected = caption_objects(caption)
    found = read_objects(image, **read_options)
    want = expected["objects"]

    def result(error, reason):
        return {"correct": error is None, "error": error, "reason": reason, "objects": found,
                "expected": expected}

    if not found:
        return result("no object", f"no object found, expected {len(want)}")
    if len(found) != len(want):
        return result("count", f"found {len(found)} objects, expected {len(want)}")
    unreadable = [o for o in found if o["colour"] is None or o["shape"] is None]
    if unreadable:
        o = unreadable[0]
        what = ("no palette colour" if o["colour"] is None else
                f"no clean shape (best template IoU {o['score']:.2f})")
        return result("unreadable", f"an object of {o['area']} px has {what}")

    def mismatches(obj, target):
        return [a for a in _ATTRIBUTES if obj[a] != target[a]]

    # Which found object is which described one: the assignment with the fewest mismatches
    # (two objects described alike match either way: then either may satisfy the relation).
    orders = [(0,)] if len(want) == 1 else [(0, 1), (1, 0)]
    cost = {o: sum(len(mismatches(found[i], w)) for i, w in zip(o, want)) for o in orders}
    best = [o for o in orders if cost[o] == min(cost.values())]
    if cost[best[0]]:
        wrong = [(a, f"{a}: read {found[i][a]}, expected {w[a]} (object '{_describe(w)}')")
                 for i, w in zip(best[0], want) for a in mismatches(found[i], w)]
        kinds = [a for a in _ATTRIBUTES if a in {k for k, _ in wrong}]
        return result("+".join(kinds), "; ".join(r for _, r in wrong))
    relation = expected["relation"]
    if relation is not None and not any(_holds(relation, found[o[0]]["center"],
                                               found[o[1]]["center"]) for o in best):
        return result("relation", f"the {_describe(want[0])} is not {relation} the "
                                  f"{_describe(want[1])}")
    return result(None, "ok")


def _holds(relation, first, second):
    """Is the first centre (x, y; y down) ``relation`` the second?"""
    return {"to the left of": first[0] < second[0], "to the right of": first[0] > second[0],
            "above": first[1] < second[1], "below": first[1] > second[1]}[relation]


def _describe(obj):
    return f"{obj['size']} {obj['colour']} {obj['shape']}"
