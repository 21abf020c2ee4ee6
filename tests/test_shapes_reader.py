"""The shapes reader: colour, shape and size read back from the renderer's own pixels, captions
checked against images, and what must not pass (wrong captions, blank, noise, bad input)."""

import numpy as np
import pytest

from keras_clip.data.shapes import (BACKGROUND, COLOURS, PALETTE, RELATIONS, SHAPES, SIZES,
                                    generate_shapes)
from keras_clip.data.shapes_reader import (_label_numpy, caption_objects, check_image,
                                           label_components, read_objects)

NUM_IMAGES = 1000  # per split


def _key(obj):
    return obj["colour"], obj["shape"], obj["size"]


def _read_back(size, num_images):
    """(objects read correctly, objects, images checked correct, images, two-object images
    correct, two-object images) over "val" + "heldout"."""
    counts = np.zeros(6, np.int64)
    for split in ("val", "heldout"):
        data = generate_shapes(num_images, split=split, image_size=size, seed=0)
        for image, caption, attributes in zip(data["images"], data["captions"],
                                              data["attributes"]):
            result = check_image(image, caption)
            found = [_key(o) for o in result["objects"]]
            wanted = [_key(o) for o in attributes["objects"]]
            counts[0] += sum(1 for w in wanted if w in found)
            counts[1] += len(wanted)
            counts[2] += result["correct"]
            counts[3] += 1
            if len(wanted) == 2:
                counts[4] += result["correct"]
                counts[5] += 1
    return counts


@pytest.mark.parametrize("size, num_images", [(64, NUM_IMAGES), (32, NUM_IMAGES // 4)])
def test_the_renderers_own_objects_are_read_back(size, num_images, capsys):
    objects_ok, objects, images_ok, images, pairs_ok, pairs = _read_back(size, num_images)
    with capsys.disabled():
        print(f"\nshapes reader at {size} px, {images} val + heldout images: objects "
              f"{objects_ok}/{objects} ({objects_ok / objects:.2%}) read correctly; captions "
              f"checked correct on {images_ok}/{images} images ({images_ok / images:.2%}), "
              f"two-object {pairs_ok}/{pairs}")
    assert pairs > 0.4 * images  # two-object images are in the measurement
    assert objects_ok >= 0.99 * objects
    assert images_ok >= 0.99 * images and pairs_ok >= 0.99 * pairs


def test_each_object_is_read_with_its_centre_and_area():
    data = generate_shapes(50, split="val", image_size=64, seed=3)
    for image, attributes in zip(data["images"], data["attributes"]):
        found = read_objects(image)
        assert len(found) == len(attributes["objects"])
        for want in attributes["objects"]:
            (got,) = [o for o in found if _key(o) == _key(want)]
            # the template's centre is placed in quarter pixels
            assert np.allclose(got["center"], want["center"], atol=0.25 / 64)
            assert got["score"] > 0.9 and 100 < got["area"] < 1000


def test_touching_large_objects_are_read_as_two():
    # Two large objects in their halves may touch at the middle line: one foreground component.
    touching = []
    for split in ("val", "heldout"):
        data = generate_shapes(NUM_IMAGES, split=split, image_size=64, seed=0)
        for image, caption, attributes in zip(data["images"], data["captions"],
                                              data["attributes"]):
            if len(attributes["objects"]) == 2 and attributes["objects"][0]["size"] == "large" \
                    == attributes["objects"][1]["size"]:
                x = image.astype(np.float32)
                distance = np.linalg.norm(x - np.median(x[0], axis=0), axis=-1)
                if label_components(distance > 80)[1] == 1:
                    touching.append((image, caption))
    assert touching
    for image, caption in touching:
        assert check_image(image, caption)["correct"], caption


def test_float_images_read_as_their_uint8_pixels():
    data = generate_shapes(20, split="heldout", image_size=64, seed=1)
    for image in data["images"]:
        a, b = read_objects(image), read_objects(image.astype(np.float64) / 255.0)
        assert [_key(o) for o in a] == [_key(o) for o in b]
        assert [o["area"] for o in a] == [o["area"] for o in b]


def _other(values, value):
    return values[(values.index(value) + 1) % len(values)]


_SWAPPED = {"to the left of": "to the right of", "to the right of": "to the left of",
            "above": "below", "below": "above"}


def test_wrong_captions_are_detected_with_their_kind():
    data = generate_shapes(40, split="val", image_size=64, seed=2)
    pairs = singles = 0
    for image, attributes in zip(data["images"], data["attributes"]):
        objects, relation = attributes["objects"], attributes["relation"]

        def caption(objs, rel=relation):
            words = [f"a {o['size']} {o['colour']} {o['shape']}" for o in objs]
            return words[0] if rel is None else f"{words[0]} {rel} {words[1]}"

        assert check_image(image, caption(objects))["correct"]
        for k in range(len(objects)):
            for attribute, values in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES)):
                wrong = [dict(o) for o in objects]
                wrong[k][attribute] = _other(values, wrong[k][attribute])
                if len(wrong) == 2 and _key(wrong[0]) == _key(wrong[1]):
                    continue  # both objects described alike: a different test
                result = check_image(image, caption(wrong))
                assert not result["correct"] and result["error"] == attribute, result["reason"]
        if relation is not None:
            pairs += 1
            result = check_image(image, caption(objects, _SWAPPED[relation]))
            assert not result["correct"] and result["error"] == "relation"
            # the objects named in the other order, relation swapped: the same scene, correct
            assert check_image(image, caption(objects[::-1], _SWAPPED[relation]))["correct"]
            assert check_image(image, caption(objects[:1], None))["error"] == "count"
        else:
            singles += 1
            extra = [objects[0], {"size": "small", "colour": _other(COLOURS, objects[0]["colour"]),
                                  "shape": "star"}]
            assert check_image(image, caption(extra, "above"))["error"] == "count"
    assert pairs and singles


def test_a_blank_image_has_no_objects():
    for image in (np.tile(BACKGROUND, (64, 64, 1)), np.full((32, 32, 3), 0.3),
                  np.zeros((16, 16, 3), np.uint8)):
        assert read_objects(image) == []
        result = check_image(image, "a large red circle")
        assert not result["correct"] and result["error"] == "no object"


def test_noise_and_speckles_are_not_read_as_clean_objects():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.uniform(size=(32, 32, 3))]
    for density in (0.05, 0.3, 0.5):  # palette-coloured dots on the background
        image = np.tile(BACKGROUND, (64, 64, 1))
        dots = rng.random((64, 64)) < density
        image[dots] = PALETTE[rng.integers(len(PALETTE), size=dots.sum())]
        images.append(image)
    # a disc of one colour, every second pixel set: the outline of a circle, not a clean one
    image = np.tile(BACKGROUND, (64, 64, 1))
    yy, xx = np.mgrid[:64, :64]
    image[((xx - 32) ** 2 + (yy - 32) ** 2 < 15 ** 2) & ((xx + yy) % 2 == 0)] = PALETTE[0]
    images.append(image)
    for image in images:
        assert not [o for o in read_objects(image) if o["shape"] is not None]
        for caption in ("a large red circle", "a small blue star above a large green square"):
            assert not check_image(image, caption)["correct"]
    # specks below the minimum area (32 px at 64 px) are dropped; a clean object among them stays
    data = generate_shapes(1, split="val", image_size=64, seed=0)
    image = np.array(data["images"][0])
    image[:6:2, 2:8:2] = PALETTE[4]
    image[58:61, 58:61] = PALETTE[1]  # 9 px
    assert check_image(image, data["captions"][0])["correct"]
    image[52:60, 52:60] = PALETTE[1]  # 64 px: an object, not a clean shape
    result = check_image(image, data["captions"][0])
    assert not result["correct"] and result["error"] in ("count", "unreadable")


def test_captions_parse_with_the_renderers_vocabulary():
    data = generate_shapes(30, split="heldout", image_size=16, seed=0)
    for caption, attributes in zip(data["captions"], data["attributes"]):
        parsed = caption_objects(caption)
        assert parsed["relation"] == attributes["relation"]
        assert [_key(o) for o in parsed["objects"]] == [_key(o) for o in attributes["objects"]]
    assert caption_objects("  A Large RED circle. ")["objects"] == [
        {"size": "large", "colour": "red", "shape": "circle"}]
    assert caption_objects(f"a small blue star {RELATIONS[2]} a large green square")[
        "relation"] == "above"
    for bad in ("a large red hexagon", "a huge red circle", "a large red circle next to a small "
                "blue star", "red circle", "a large red circle above", ""):
        with pytest.raises(ValueError, match=f"caption {bad!r} is not a shapes caption"):
            check_image(np.zeros((16, 16, 3), np.uint8), bad)
    with pytest.raises(ValueError, match="caption must be a str, got NoneType"):
        caption_objects(None)


def test_bad_images_and_arguments_are_named():
    ok = np.zeros((16, 16, 3), np.uint8)
    for image, error, message in [
        (np.zeros((16, 16), np.uint8), ValueError, r"one \(S, S, 3\) RGB image, got shape \(16, 16\)"),
        (np.zeros((2, 16, 16, 3), np.uint8), ValueError, r"got shape \(2, 16, 16, 3\)"),
        (np.zeros((16, 16, 4), np.uint8), ValueError, r"got shape \(16, 16, 4\)"),
        (np.zeros((16, 20, 3), np.uint8), ValueError, r"must be square.*\(16, 20, 3\)"),
        (np.zeros((8, 8, 3), np.uint8), ValueError, r"at least 16 px, got shape \(8, 8, 3\)"),
        (np.zeros((16, 16, 3), np.int64), TypeError, r"uint8 or float in \[0, 1\], got dtype int64"),
        (np.zeros((16, 16, 3), bool), TypeError, r"got dtype bool"),
        (np.full((16, 16, 3), 255.0), ValueError, r"must be in \[0, 1\], got values in \[255, 255\]"),
        (np.full((16, 16, 3), np.nan), ValueError, r"NaN or infinite"),
    ]:
        with pytest.raises(error, match=message):
            read_objects(image)
        with pytest.raises(error, match=message):
            check_image(image, "a large red circle")
    for name in ("threshold", "min_area", "min_score", "max_colour_distance"):
        for value in (-1, float("nan"), "1"):
            with pytest.raises(ValueError, match=f"{name} must be a number >= 0, got {value!r}"):
                read_objects(ok, **{name: value})


def test_the_numpy_labelling_matches_scipys():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    for _ in range(40):
        mask = rng.random(tuple(rng.integers(1, 40, size=2))) < rng.random()
        expected, count = label_components(mask)
        labels, n = _label_numpy(mask)
        assert n == count
        np.testing.assert_array_equal(labels, expected)
