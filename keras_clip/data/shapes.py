"""Captioned shapes: the built-in, download-free image–caption dataset.

Coloured shapes on a plain light-grey background, with captions such as
"a small red square" or "a large blue star to the left of a small green circle".
Everything is drawn with vectorised numpy from a seeded RNG, so a split is a pure function of
``(split, seed, index)``: the same example at 32 px and at 64 px is the same scene, and the first
k examples of ``generate_shapes(n)`` are ``generate_shapes(k)`` for any n ≥ k.

Vocabulary: 6 colours × 5 shapes = 30 (colour, shape) classes, 2 sizes, 4 relations.

* One object (half of the examples) or two; with two, the caption describes the first object
  relative to the second ("to the left of", "to the right of", "above", "below") and each object
  sits in its own half of the image, so objects never overlap.
* Sizes: radius 0.16 ("small") or 0.24 ("large") of the image side — 5 px / 8 px at 32 px.

Splits (``HELDOUT_PAIRS``, for zero-shot generalisation tests):

* The held-out combinations are colour i with shape i, in the order of ``COLOURS`` and
  ``SHAPES``: red circle, green square, blue triangle, yellow diamond, purple star — 5 of the 30
  pairs (1/6). Every colour and every shape still occurs in training, with other partners.
* "train" and "val" never contain a held-out pair, neither as first nor as second object; they
  use the same 25 pairs and differ only in the RNG stream (different samples).
* "heldout": the first object is always a held-out pair; the second (when present) is a seen pair.
* "finetune": a small fine-tuning set that has the held-out pairs: the first object is any of the
  30 pairs (held-out ones included), the second a seen pair; its own RNG stream (no sample is
  also in "heldout" or "val"). `make demo-finetune` teaches the demo CLIP the held-out pairs
  with it.

Labels (:func:`labels`) are the class index of the first object's (colour, shape) in ``CLASSES``
(all 30 classes), so zero-shot top-1 on "heldout" is measured against seen classes too.

Example:
    >>> data = generate_shapes(1000, split="train", image_size=64, seed=0)
    >>> data["images"].shape, data["captions"][0]
    ((1000, 64, 64, 3), 'a small orange square to the left of a small orange triangle')
    >>> names, prompts = class_prompts()             # 30 names, "a photo of a red circle."
    >>> y = labels(data["attributes"])               # int64 (1000,), index into names
"""

import functools

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "diamond", "star")
SIZES = ("small", "large")
RELATIONS = ("to the left of", "to the right of", "above", "below")
SPLITS = ("train", "val", "heldout", "finetune")

# Well separated in RGB (nearest pair: yellow–orange, 75 apart; jitter moves a colour ≤ 17) so
# that a colour survives JPEG, resizing and a generator's blur, and `dominant_colour` names it.
PALETTE = np.array([
    (215, 35, 35),    # red
    (40, 160, 50),    # green
    (35, 75, 215),    # blue
    (240, 210, 30),   # yellow
    (140, 50, 175),   # purple
    (245, 135, 25),   # orange
], np.uint8)
BACKGROUND = np.array((235, 235, 235), np.uint8)

RADIUS = {"small": 0.16, "large": 0.24}  # fraction of the image side
TWO_OBJECT_FRACTION = 0.5
COLOUR_JITTER = 10  # ± per channel: a little variety without leaving the colour's neighbourhood

CLASSES = tuple((c, s) for c in COLOURS for s in SHAPES)  # label order: colour-major
# "The i-th colour with the i-th shape": each shape loses exactly one colour, each colour at
# most one shape, so every attribute is still learnt in training.
HELDOUT_PAIRS = frozenset((COLOURS[i], SHAPES[i]) for i in range(len(SHAPES)))
SEEN_PAIRS = tuple(p for p in CLASSES if p not in HELDOUT_PAIRS)

DEFAULT_NUM_EXAMPLES = {"train": 20_000, "val": 1_000, "heldout": 1_000, "finetune": 2_000}

_CHUNK = 1024  # examples per RNG stream: generation is chunked, so prefixes are stable
_SPLIT_IDS = {"train": 0, "val": 1, "heldout": 2, "finetune": 3}
_CLASS_INDEX = {p: i for i, p in enumerate(CLASSES)}


def class_names():
    """The 30 class names, "red circle" … "orange star", in ``CLASSES`` (label) order."""
    return [f"{c} {s}" for c, s in CLASSES]


def class_prompts(template="a photo of a {}."):
    """Zero-shot class names and one prompt each (label order, all 30 classes).

    Returns ``(names, prompts)``. For prompt ensembles pass ``names`` and your templates to
    ``keras_clip.zero_shot.zero_shot_classifier`` instead.

    Example:
        >>> names, prompts = class_prompts()
        >>> names[0], prompts[0]
        ('red circle', 'a photo of a red circle.')
    """
    names = class_names()
    return names, [template.format(n) for n in names]


def heldout_class_indices():
    """Label indices of the held-out (colour, shape) classes, ascending."""
    return sorted(_CLASS_INDEX[p] for p in HELDOUT_PAIRS)


def labels(attributes):
    """Label of each example: class index (into ``CLASSES``) of its first object, int64 (N,).

    Example:
        >>> data = generate_shapes(8, split="heldout")
        >>> set(labels(data["attributes"])) <= set(heldout_class_indices())
        True
    """
    return np.array([_CLASS_INDEX[(a["objects"][0]["colour"], a["objects"][0]["shape"])]
                     for a in attributes], np.int64)


def generate_shapes(num_examples, split="train", image_size=64, seed=0):
    """Draw ``num_examples`` captioned-shape images (deterministic by ``seed``).

    The last 4 distinct calls are cached in memory (N·S²·3 bytes each: 245 MB for 20k at 64 px).

    Returns a dict:
      * ``images``: uint8 (N, image_size, image_size, 3), read-only (shared by the cache);
      * ``captions``: list of N str;
      * ``attributes``: list of N dicts ``{"objects": [{"colour", "shape", "size", "center":
        (x, y) in [0, 1] image fractions, "radius"}, ...], "relation": str or None}`` — the
        relation says where the first object is relative to the second;
      * ``labels``: int64 (N,), as :func:`labels`.

    Example:
        >>> d = generate_shapes(4, split="val", image_size=32, seed=1)
        >>> d["images"].shape, d["attributes"][0]["objects"][0]["colour"] in COLOURS
        ((4, 32, 32, 3), True)
    """
    num_examples, image_size, seed = int(num_examples), int(image_size), int(seed)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 to draw recognisable shapes, got {image_size}")
    images, captions, attributes = _generate_cached(num_examples, split, image_size, seed)
    return {"images": images, "captions": list(captions),
            "attributes": [{"objects": [dict(o) for o in a["objects"]],
                            "relation": a["relation"]} for a in attributes],
            "labels": labels(attributes)}


def shapes_dataset(split="train", num_examples=None, image_size=64, seed=0, with_labels=False):
    """``tf.data.Dataset`` of ``{"images": uint8 (H, W, 3), "captions": tf.string}`` (unbatched).

    The images are generated once (see :func:`generate_shapes`) and held in memory;
    ``num_examples`` defaults to ``DEFAULT_NUM_EXAMPLES[split]`` (20k / 1k / 1k).
    ``with_labels=True`` adds ``"labels"`` (int64, first object's class index).

    Example:
        >>> ds = shapes_dataset("val", num_examples=100).batch(32)
        >>> next(iter(ds))["images"].shape
        TensorShape([32, 64, 64, 3])
    """
    import tensorflow as tf  # numpy-only users of generate_shapes need no TF

    if num_examples is None:
        num_examples = DEFAULT_NUM_EXAMPLES.get(split, 1_000)
    data = generate_shapes(num_examples, split=split, image_size=image_size, seed=seed)
    elements = {"images": data["images"], "captions": np.array(data["captions"], dtype=object)}
    if with_labels:
        elements["labels"] = data["labels"]
    return tf.data.Dataset.from_tensor_slices(elements)


def dominant_colour(image, threshold=80.0):
    """Palette name of the colour covering most non-background pixels, or None if there are none.

    The background is estimated as the median of the border pixels (so a generated image with an
    off-grey background still works); pixels further than ``threshold`` (RGB, 0–255 scale) from it
    are foreground, each is mapped to its nearest ``PALETTE`` colour, and the majority wins.
    Accepts uint8 (H, W, 3) or float in [0, 1].

    Example:
        >>> d = generate_shapes(1, split="val")
        >>> d["captions"][0], dominant_colour(d["images"][0])
        ('a large yellow square', 'yellow')
    """
    x = np.asarray(image)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"dominant_colour expects one (H, W, 3) image, got shape {x.shape}")
    x = x.astype(np.float32) * (255.0 if np.issubdtype(x.dtype, np.floating) else 1.0)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    background = np.median(border, axis=0)
    pixels = x.reshape(-1, 3)
    foreground = pixels[np.linalg.norm(pixels - background, axis=1) > threshold]
    if len(foreground) == 0:
        return None
    distances = np.linalg.norm(foreground[:, None, :] - PALETTE[None].astype(np.float32), axis=2)
    votes = np.bincount(distances.argmin(axis=1), minlength=len(COLOURS))
    return COLOURS[int(votes.argmax())]


# ----------------------------------------------------------------------------------------------
# Generation

@functools.lru_cache(maxsize=4)
def _generate_cached(num_examples, split, image_size, seed):
    images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
    captions, attributes = [], []
    for start in range(0, num_examples, _CHUNK):
        scene = _sample_scenes(_CHUNK, split, seed, start // _CHUNK)  # full chunk: stable prefixes
        n = min(_CHUNK, num_examples - start)
        rgbx = _render({k: v[:n] for k, v in scene.items()}, image_size)
        for c in range(3):  # per channel: ~4x faster than one strided (…, 4) → (…, 3) copy
            images[start:start + n, ..., c] = rgbx[..., c]
        for i in range(n):
            caption, attrs = _describe(scene, i)
            captions.append(caption)
            attributes.append(attrs)
    images.setflags(write=False)  # the cache hands out the same array every time
    return images, tuple(captions), tuple(attributes)


def _sample_scenes(n, split, seed, chunk):
    """Scene parameters of one chunk, as arrays of length n."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], chunk])
    seen = np.array([_CLASS_INDEX[p] for p in SEEN_PAIRS])
    first_pool = {"heldout": np.array(heldout_class_indices()),
                  "finetune": np.arange(len(CLASSES))}.get(split, seen)
    first = first_pool[rng.integers(len(first_pool), size=n)]
    # Second object: uniform over the seen pairs other than the first (identical twins would
    # make the relation ambiguous): draw from one fewer and step over the first's slot.
    slot = np.searchsorted(seen, first)
    first_is_seen = seen[np.minimum(slot, len(seen) - 1)] == first
    k = rng.integers(len(seen) - first_is_seen.astype(np.int64))
    second = seen[k + (first_is_seen & (k >= slot))]
    two = rng.random(n) < TWO_OBJECT_FRACTION
    size = rng.integers(2, size=(n, 2))  # index into SIZES
    radius = np.where(size == 1, RADIUS["large"], RADIUS["small"])
    relation = rng.integers(len(RELATIONS), size=n)
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=(n, 2, 3))
    margin = 0.02

    # Single object: anywhere it fits. Two objects: each in its own half along the relation's
    # axis (no overlap), free along the other axis.
    u = rng.random((n, 2, 2))  # (object, axis x/y) uniforms
    lo, hi = radius[..., None] + margin, 1.0 - radius[..., None] - margin
    center = lo + u * (hi - lo)  # (n, 2 objects, 2 axes), single-object placement
    axis = np.where(relation < 2, 0, 1)  # left/right → x, above/below → y
    first_low = (relation == 0) | (relation == 2)  # "to the left of" / "above": first is at low
    for obj in range(2):
        in_low_half = first_low if obj == 0 else ~first_low
        r = radius[:, obj]
        half_lo = np.where(in_low_half, r + margin, 0.5 + r + margin)
        half_hi = np.where(in_low_half, 0.5 - r - margin, 1.0 - r - margin)
        pos = half_lo + u[np.arange(n), obj, axis] * (half_hi - half_lo)
        rows = np.nonzero(two)[0]
        center[rows, obj, axis[rows]] = pos[rows]
    return {"first": first, "second": second, "two": two, "size": size, "radius": radius,
            "relation": relation, "jitter": jitter, "center": center}


def _render(scene, size):
    """Scenes → uint8 RGBX images (n, size, size, 4).

    Shapes are signed-distance functions; coverage = clip(0.5 − d) (d in pixels) anti-aliases
    the edges in one pass, no supersampling. Each object is evaluated on its bounding-box patch
    only (4–8× fewer pixels than the whole image)."""
    n = len(scene["first"])
    # Flat RGBX pixels packed in uint32: fancy-indexing 4-byte scalars is ~10x faster than
    # 3-byte rows, and one flat index per patch pixel serves every image at once.
    out = np.empty(n * size * size, np.uint32)
    out[:] = np.append(BACKGROUND, np.uint8(0)).view(np.uint32)[0]
    for obj in range(2):
        cls = scene["first"] if obj == 0 else scene["second"]
        present = np.ones(n, bool) if obj == 0 else scene["two"]
        colour = np.clip(PALETTE[cls // len(SHAPES)].astype(np.int32) + scene["jitter"][:, obj],
                         0, 255).astype(np.float32)
        for s, shape in enumerate(SHAPES):
            for radius in RADIUS.values():
                idx = np.nonzero(present & (cls % len(SHAPES) == s)
                                 & (scene["radius"][:, obj] == radius))[0]
                if len(idx):
                    _draw(out, idx, scene["center"][idx, obj], radius, colour[idx], shape, size)
    return out.view(np.uint8).reshape(n, size, size, 4)  # RGBX


def _draw(out, idx, center, radius, colour, shape, size):
    """Composite one shape (same kind and radius) onto images `idx` of the flat `out`."""
    width = min(size, int(np.ceil(2 * radius * size)) + 2)  # patch side, with a pixel of AA room
    origin = np.clip(np.floor((center - radius) * size).astype(np.int64) - 1, 0, size - width)
    steps = np.arange(width)
    cols = origin[:, 0, None] + steps  # (k, width) pixel x
    rows = origin[:, 1, None] + steps  # (k, width) pixel y
    r = np.float32(radius)
    u = (((cols + 0.5) / size).astype(np.float32) - center[:, 0, None].astype(np.float32)) / r
    v = (((rows + 0.5) / size).astype(np.float32) - center[:, 1, None].astype(np.float32)) / r
    d = _SDF[shape](u[:, None, :], v[:, :, None])  # (k, y, x), in radii
    coverage = np.clip(0.5 - d * (r * size), 0.0, 1.0)[..., None]
    flat = (idx[:, None, None] * size + rows[:, :, None]) * size + cols[:, None, :]
    patch = out[flat].view(np.uint8).reshape(*flat.shape, 4).astype(np.float32)
    colour = np.append(colour, np.zeros((len(colour), 1), np.float32), axis=1)
    patch += coverage * (colour[:, None, None, :] - patch)
    out[flat] = np.rint(patch).astype(np.uint8).view(np.uint32)[..., 0]


def _sdf_circle(u, v):
    return np.sqrt(u * u + v * v) - 1.0


def _sdf_square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) - 0.8  # side 1.6 radii


def _sdf_diamond(u, v):
    # Rhombus, half-width 0.8, half-height 1 (narrower than a rotated square: tells them apart).
    w = 0.8
    return (np.abs(u) / w + np.abs(v) - 1.0) / np.sqrt(1.0 / w ** 2 + 1.0)


_TRI_NORM = np.sqrt(1.8 ** 2 + 1.0)


def _sdf_triangle(u, v):
    # Apex (0, -1), base at v = 0.8 from u = -1 to 1: pointing up, fills the bounding circle.
    sides = (1.8 * np.abs(u) - (v + 1.0)) / _TRI_NORM
    return np.maximum(sides, v - 0.8)


_STAR_INNER = 0.45  # inner/outer radius; fatter than a pentagram (0.38) to stay legible at 32 px
_STAR_SECTOR = 2 * np.pi / 5
_STAR_B = _STAR_INNER * np.array([np.cos(np.pi / 5), np.sin(np.pi / 5)])  # inner vertex
_STAR_N = np.array([_STAR_B[1], 1.0 - _STAR_B[0]])  # outward normal of edge A=(1,0) → B
_STAR_N = _STAR_N / np.linalg.norm(_STAR_N)


def _sdf_star(u, v):
    # Fold the angle into one half-spike [0, π/5] (0 = a tip, pointing up); the star is then the
    # origin's side of the line from the tip A = (1, 0) to the inner vertex B.
    angle = np.mod(np.arctan2(u, -v), _STAR_SECTOR)
    angle = np.minimum(angle, _STAR_SECTOR - angle)
    rho = np.sqrt(u * u + v * v)
    return (rho * np.cos(angle) - 1.0) * _STAR_N[0] + rho * np.sin(angle) * _STAR_N[1]


_SDF = {"circle": _sdf_circle, "square": _sdf_square, "triangle": _sdf_triangle,
        "diamond": _sdf_diamond, "star": _sdf_star}


def shape_sdf(shape, u, v):
    """The renderer's own signed distance to the outline of ``shape``: float array, in radii.

    ``u`` (right) and ``v`` (down) are offsets from the shape's centre in radii (arrays that
    broadcast); the result is negative inside. A pixel whose centre is ``d`` radii from the
    outline is covered ``clip(0.5 − d · radius_px, 0, 1)``. Public for readers of the pixels
    (`keras_clip.data.shapes_reader` renders its templates with it). Raises ValueError for a
    shape not in ``SHAPES``.
    """
    if shape not in _SDF:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    return _SDF[shape](np.asarray(u), np.asarray(v))


def _describe(scene, i):
    def obj(k):
        colour, shape = CLASSES[int(scene["first"][i] if k == 0 else scene["second"][i])]
        return {"colour": colour, "shape": shape, "size": SIZES[int(scene["size"][i, k])],
                "center": (float(scene["center"][i, k, 0]), float(scene["center"][i, k, 1])),
                "radius": float(scene["radius"][i, k])}

    objects = [obj(0)] + ([obj(1)] if scene["two"][i] else [])
    words = [f"a {o['size']} {o['colour']} {o['shape']}" for o in objects]
    relation = RELATIONS[int(scene["relation"][i])] if len(objects) == 2 else None
    caption = words[0] if relation is None else f"{words[0]} {relation} {words[1]}"
    return caption, {"objects": objects, "relation": relation}
