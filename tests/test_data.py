"""keras_clip.data: the captioned-shapes dataset, the shard readers and the CLIP pipeline."""

import io
import os
import re
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_clip.data import readers, shapes
from keras_clip.data.readers import SkipCounter, make_clip_dataset
from keras_clip.preprocessing import CLIPImagePreprocessor
from keras_clip.text.tokenizer import tokenize

NUM_RECORDS = 200
BAD_IMAGES = {7: b"definitely not an image", 123: "truncate"}  # index → corruption
EMPTY_CAPTION = 50
IMAGE_SIZE = 32


def _stub_tokenizer(captions):
    """Stands in for CLIPTokenizer where only the images and counts matter (faster to trace)."""
    return tf.zeros([tf.size(captions), 77], tf.int32)


# ----------------------------------------------------------------------------------------------
# Shapes

def test_heldout_rule():
    assert shapes.HELDOUT_PAIRS == {("red", "circle"), ("green", "square"), ("blue", "triangle"),
                                    ("yellow", "diamond"), ("purple", "star")}
    assert len(shapes.CLASSES) == 30 and len(shapes.HELDOUT_PAIRS) * 6 == len(shapes.CLASSES)
    # Every colour and shape is still seen in training.
    assert {c for c, _ in shapes.SEEN_PAIRS} == set(shapes.COLOURS)
    assert {s for _, s in shapes.SEEN_PAIRS} == set(shapes.SHAPES)


def test_deterministic_by_seed():
    a = shapes.generate_shapes(40, split="train", seed=3)
    shapes._generate_cached.cache_clear()  # really draw again
    b = shapes.generate_shapes(40, split="train", seed=3)
    np.testing.assert_array_equal(a["images"], b["images"])
    assert a["captions"] == b["captions"] and a["attributes"] == b["attributes"]
    c = shapes.generate_shapes(40, split="train", seed=4)
    assert a["captions"] != c["captions"]
    # Prefix-stable, and the same scenes at any resolution.
    assert shapes.generate_shapes(10, split="train", seed=3)["captions"] == a["captions"][:10]
    small = shapes.generate_shapes(40, split="train", image_size=32, seed=3)
    assert small["images"].shape == (40, 32, 32, 3) and small["captions"] == a["captions"]
    # val is a different sample of the same distribution.
    assert shapes.generate_shapes(40, split="val", seed=3)["captions"] != a["captions"]


@pytest.fixture(scope="module")
def splits():
    return {s: shapes.generate_shapes(n, split=s, seed=0)
            for s, n in (("train", 3000), ("val", 500), ("heldout", 500))}


def test_heldout_pairs_never_in_train_or_val(splits):
    for split in ("train", "val"):
        pairs = {(o["colour"], o["shape"]) for a in splits[split]["attributes"]
                 for o in a["objects"]}
        assert not pairs & shapes.HELDOUT_PAIRS
        assert pairs == set(shapes.SEEN_PAIRS)  # and every seen pair occurs
    first = [(a["objects"][0]["colour"], a["objects"][0]["shape"])
             for a in splits["heldout"]["attributes"]]
    assert set(first) == shapes.HELDOUT_PAIRS
    heldout_labels = set(shapes.labels(splits["heldout"]["attributes"]))
    assert heldout_labels == set(shapes.heldout_class_indices())
    assert not set(shapes.labels(splits["val"]["attributes"])) & heldout_labels


def test_captions_match_attributes(splits):
    word = r"(small|large) (red|green|blue|yellow|purple|orange) " \
           r"(circle|square|triangle|diamond|star)"
    relation = "(to the left of|to the right of|above|below)"
    pattern = re.compile(f"a {word}(?: {relation} a {word})?")
    data = splits["train"]
    counts = {1: 0, 2: 0}
    for caption, attrs in zip(data["captions"], data["attributes"]):
        m = pattern.fullmatch(caption)
        assert m, caption
        objects = attrs["objects"]
        counts[len(objects)] += 1
        assert m.groups()[:3] == tuple(objects[0][k] for k in ("size", "colour", "shape"))
        if len(objects) == 2:
            assert m.group(4) == attrs["relation"]
            assert m.groups()[4:] == tuple(objects[1][k] for k in ("size", "colour", "shape"))
            (x1, y1), (x2, y2) = objects[0]["center"], objects[1]["center"]
            assert {"to the left of": x1 < x2, "to the right of": x1 > x2,
                    "above": y1 < y2, "below": y1 > y2}[attrs["relation"]], caption
            # No overlap: the bounding circles are apart.
            assert np.hypot(x1 - x2, y1 - y2) > objects[0]["radius"] + objects[1]["radius"]
        else:
            assert attrs["relation"] is None and m.group(4) is None
    assert 0.4 < counts[2] / len(data["captions"]) < 0.6
    names, prompts = shapes.class_prompts()
    assert names[0] == "red circle" and prompts[0] == "a photo of a red circle."
    assert len(prompts) == 30


@pytest.mark.parametrize("image_size", [64, 32])
def test_images_contain_the_described_colours(image_size):
    data = shapes.generate_shapes(400, split="val", image_size=image_size, seed=1)
    palette = shapes.PALETTE.astype(float)
    for image, attrs in zip(data["images"], data["attributes"]):
        for obj in attrs["objects"]:
            # Every shape contains its centre; sample the pixel there.
            x, y = (int(c * image_size) for c in obj["center"])
            pixel = image[y, x].astype(float)
            nearest = shapes.COLOURS[np.linalg.norm(palette - pixel, axis=1).argmin()]
            assert nearest == obj["colour"], (attrs, pixel)
        # Area in pixels is about right: the objects cover what their size says.
        foreground = np.linalg.norm(image.astype(float) - shapes.BACKGROUND, axis=-1) > 60
        assert foreground.sum() >= 0.25 * sum((o["radius"] * image_size) ** 2
                                              for o in attrs["objects"])


def test_dominant_colour_recovers_single_object_colour():
    data = shapes.generate_shapes(600, split="train", seed=2)
    single = [(img, a) for img, a in zip(data["images"], data["attributes"])
              if len(a["objects"]) == 1]
    hits = [shapes.dominant_colour(img) == a["objects"][0]["colour"] for img, a in single]
    assert len(single) > 200 and np.mean(hits) >= 0.95
    # Also after a JPEG round trip and as [0, 1] floats.
    img, attrs = single[0]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=75)
    jpeg = np.asarray(Image.open(buf))
    assert shapes.dominant_colour(jpeg / 255.0) == attrs["objects"][0]["colour"]
    assert shapes.dominant_colour(np.full((8, 8, 3), 235, np.uint8)) is None


def test_shapes_dataset():
    ds = shapes.shapes_dataset("heldout", num_examples=20, image_size=32, with_labels=True)
    assert ds.element_spec["images"] == tf.TensorSpec([32, 32, 3], tf.uint8)
    assert ds.element_spec["captions"] == tf.TensorSpec([], tf.string)
    first = next(iter(ds))
    data = shapes.generate_shapes(20, split="heldout", image_size=32)
    np.testing.assert_array_equal(first["images"], data["images"][0])
    assert first["captions"].numpy().decode() == data["captions"][0]
    assert int(first["labels"]) in shapes.heldout_class_indices()


# ----------------------------------------------------------------------------------------------
# Shard files written by the tests

def _records():
    """200 (key, image bytes, caption); 2 corrupt images, 1 empty caption, mixed JPEG/PNG."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(NUM_RECORDS):
        pixels = rng.integers(0, 256, size=(20 + i % 7, 24, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG" if i % 3 == 0 else "JPEG")
        data = buf.getvalue()
        if i in BAD_IMAGES:
            data = data[:len(data) // 3] if BAD_IMAGES[i] == "truncate" else BAD_IMAGES[i]
        caption = "" if i == EMPTY_CAPTION else f"caption number {i}"
        ext = "png" if i % 3 == 0 else "jpg"
        out.append((f"{i:06d}", ext, data, caption))
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    records = _records()
    halves = (records[:NUM_RECORDS // 2], records[NUM_RECORDS // 2:])
    for n, half in enumerate(halves):
        # img2dataset's tfrecord writer: key, the image under "jpg" (its encode format), txt,
        # plus metadata columns.
        with tf.io.TFRecordWriter(str(root / f"{n:05d}.tfrecord")) as w:
            for key, _, data, caption in half:
                feature = {"key": _bytes(key.encode()), "jpg": _bytes(data),
                           "txt": _bytes(caption.encode()),
                           "url": _bytes(b"http://x/" + key.encode()),
                           "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[24]))}
                w.write(tf.train.Example(
                    features=tf.train.Features(feature=feature)).SerializeToString())
        with tarfile.open(root / f"{n:05d}.tar", "w") as tar:
            for key, ext, data, caption in half:
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", b"{}")
    images = root / "images"
    images.mkdir()
    with open(root / "train.tsv", "w") as f:
        f.write("title\tfilepath\n")
        for key, ext, data, caption in records:
            (images / f"{key}.{ext}").write_bytes(data)
            f.write(f"{caption}\timages/{key}.{ext}\n")
    return root, records


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _as_set(ds):
    return {(x["image_bytes"], x["captions"].decode()) for x in ds.as_numpy_iterator()}


def _expected(records):
    return {(data, caption) for _, _, data, caption in records}


@pytest.mark.parametrize("kind", ["tfrecord", "tar"])
def test_shard_readers_return_every_record(shards, kind):
    root, records = shards
    read = readers.read_tfrecord if kind == "tfrecord" else readers.read_webdataset
    ds = read(str(root / f"*.{kind}"))
    assert ds.element_spec == {"image_bytes": tf.TensorSpec([], tf.string),
                               "captions": tf.TensorSpec([], tf.string)}
    assert _as_set(ds) == _expected(records)
    # One shard alone keeps the file order.
    one = [x["captions"].decode() for x in read(str(root / f"00000.{kind}")).as_numpy_iterator()]
    assert one == [r[3] for r in records[:NUM_RECORDS // 2]]


def test_tsv_reader(shards):
    root, records = shards
    ds = readers.read_tsv(str(root / "train.tsv"))
    assert [x["captions"].decode() for x in ds.as_numpy_iterator()] == [r[3] for r in records]
    assert _as_set(ds) == _expected(records)


def test_tsv_quoting_paths_and_bad_rows(tmp_path):
    (tmp_path / "sub").mkdir()
    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, "PNG")
    (tmp_path / "sub" / "a.png").write_bytes(png.getvalue())
    absolute = str(tmp_path / "sub" / "a.png")
    lines = ["id,url,caption,path",  # custom column names and separator, extra columns
             '1,u,"a cat, quoted ""twice""",sub/a.png',
             '2,u,a "vintage" car,' + absolute,
             "",  # blank lines are ignored
             "3,u,too few columns",
             "4,u,missing file,sub/nope.png"]
    (tmp_path / "meta.csv").write_text("\r\n".join(lines) + "\r\n")
    counter = SkipCounter()
    ds = readers.read_tsv(str(tmp_path / "meta.csv"), image_key="path", caption_key="caption",
                          sep=",", skip_counter=counter)
    got = [(x["image_bytes"], x["captions"].decode()) for x in ds.as_numpy_iterator()]
    assert got == [(png.getvalue(), 'a cat, quoted "twice"'), (png.getvalue(), 'a "vintage" car')]
    assert counter.result() == {"bad_image": 1, "empty_caption": 0, "bad_caption": 0,
                                "bad_record": 1}
    with pytest.raises(ValueError, match="no column"):
        readers.read_tsv(str(tmp_path / "meta.csv"))


def test_csv_is_comma_separated_and_tsv_tab_separated_by_default(tmp_path):
    # Was (new-user trial): a "filepath,title" .csv was read as tab-separated ("no column ...
    # in the header ['filepath,title']"); the trainer and evaluate share this reader.
    for i, rgb in enumerate([(200, 0, 0), (0, 200, 0)]):
        Image.fromarray(np.full((8, 8, 3), rgb, np.uint8)).save(tmp_path / f"{i}.png")
    captions = ["a red square", "a green square, quoted"]
    (tmp_path / "pairs.csv").write_text('filepath,title\n0.png,a red square\n'
                                        '1.png,"a green square, quoted"\n')
    (tmp_path / "pairs.tsv").write_text("filepath\ttitle\n0.png\ta red square\n"
                                        "1.png\ta green square, quoted\n")
    assert readers.default_separator("a/b.CSV") == ","
    assert readers.default_separator("b.tsv") == "\t"
    for name in ("pairs.csv", "pairs.tsv"):
        counter = SkipCounter()
        got = [x["captions"].decode() for x in
               readers.read_tsv(str(tmp_path / name), skip_counter=counter).as_numpy_iterator()]
        assert got == captions and counter.total == 0, name
        batch = next(iter(make_clip_dataset(str(tmp_path / name), 2, image_size=8,
                                            shuffle=False)))
        assert batch["images"].shape == (2, 8, 8, 3)
        np.testing.assert_array_equal(batch["token_ids"].numpy(),
                                      tokenize(captions, context_length=77))
    # An explicit separator still wins: a tab-separated table named .csv.
    (tmp_path / "tabs.csv").write_text("filepath\ttitle\n0.png\ta red square\n")
    with pytest.raises(ValueError, match=r"no column .* read with comma as the separator"):
        readers.read_tsv(str(tmp_path / "tabs.csv"))
    got = [x["captions"] for x in readers.read_tsv(str(tmp_path / "tabs.csv"), sep="\t")
           .as_numpy_iterator()]
    assert got == [b"a red square"]
    with pytest.raises(ValueError, match="sep must be one character"):
        readers.read_tsv(str(tmp_path / "tabs.csv"), sep=", ")


def test_webdataset_tar_details(tmp_path):
    """Directories, long names (pax and GNU), upper-case extensions, missing members."""
    long_key = "d/" + "k" * 120
    members = [("x/a.JPG", b"img-a"), ("x/a.txt", b"cap a"), ("x/a.json", b"{}"),
               (long_key + ".png", b"img-long"), (long_key + ".txt", b"cap long"),
               ("b.txt", b"only a caption"),
               ("c.webp", b"only an image"),
               ("d.seg.txt", b"ignored: extension seg.txt"), ("d.jpeg", b"img-d"),
               ("d.txt", "caption d \u00e9".encode())]
    expected = [(b"img-a", b"cap a"), (b"img-long", b"cap long"), (b"", b"only a caption"),
                (b"only an image", b""), (b"img-d", "caption d \u00e9".encode())]
    for fmt, suffix in ((tarfile.PAX_FORMAT, "pax.tar"), (tarfile.GNU_FORMAT, "gnu.tar.gz")):
        path = tmp_path / suffix
        with tarfile.open(path, "w:gz" if suffix.endswith("gz") else "w", format=fmt) as tar:
            for name, data in members:
                _add(tar, name, data)
        got = [(x["image_bytes"], x["captions"])
               for x in readers.read_webdataset(str(path)).as_numpy_iterator()]
        assert got == expected, fmt


def test_list_files(shards):
    root, _ = shards
    assert readers.list_files(str(root / "{00000..00001}.tar")) == \
        [str(root / "00000.tar"), str(root / "00001.tar")]
    assert readers.list_files(str(root / "{split}.tsv"), split="train") == \
        [str(root / "train.tsv")]
    with pytest.raises(FileNotFoundError):
        readers.list_files(str(root / "*.nothing"))
    assert readers.source_format("a/b-*.tfrec") == "tfrecord"
    assert readers.source_format(["x.tar"]) == "webdataset"
    with pytest.raises(ValueError, match="format"):
        readers.source_format("x.parquet")


# ----------------------------------------------------------------------------------------------
# The pipeline

@pytest.mark.parametrize("pattern", ["*.tfrecord", "*.tar", "train.tsv"])
def test_corrupt_records_are_skipped_and_counted(shards, pattern):
    root, records = shards
    counter = SkipCounter()
    ds = make_clip_dataset(str(root / pattern), batch_size=50, image_size=IMAGE_SIZE,
                           shuffle=pattern != "train.tsv", drop_remainder=False,
                           skip_counter=counter, tokenizer=_stub_tokenizer)
    assert ds.skip_counter is counter
    batches = list(ds)
    assert sum(len(b["images"]) for b in batches) == NUM_RECORDS - len(BAD_IMAGES) - 1
    assert counter.result() == {"bad_image": 2, "empty_caption": 1, "bad_caption": 0,
                                "bad_record": 0}
    assert "bad_image=2, empty_caption=1" in counter.log()


def test_file_pipeline_shuffle_is_deterministic_by_seed(shards):
    root, _ = shards

    def first_batches(seed):
        ds = make_clip_dataset(str(root / "*.tar"), batch_size=20, image_size=IMAGE_SIZE,
                               seed=seed, num_examples=60, tokenizer=_stub_tokenizer)
        return np.concatenate([b["images"].numpy() for b in ds])

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_pipeline_output_matches_preprocessor_and_tokenizer(shards):
    root, records = shards
    ds = make_clip_dataset(str(root / "00000.tfrecord"), batch_size=4, image_size=IMAGE_SIZE,
                           shuffle=False)
    batch = next(iter(ds))
    assert batch["images"].dtype == tf.float32 and batch["images"].shape == (4, 32, 32, 3)
    assert batch["token_ids"].dtype == tf.int32 and batch["token_ids"].shape == (4, 77)
    first = records[:4]
    expected = CLIPImagePreprocessor(IMAGE_SIZE)(tf.constant([r[2] for r in first]))
    np.testing.assert_allclose(batch["images"], expected, atol=1e-6)
    np.testing.assert_array_equal(batch["token_ids"], tokenize([r[3] for r in first]))


def test_bad_captions_are_counted():
    counter = SkipCounter()
    ds = tf.data.Dataset.from_tensor_slices({"captions": [b"ok", b"  ", b"\xff\xfe bad", b"x"]})
    kept = [x["captions"] for x in readers.check_captions(ds, counter).as_numpy_iterator()]
    assert kept == [b"ok", b"x"]
    assert counter["empty_caption"] == 1 and counter["bad_caption"] == 1 and counter.total == 2
    counter.reset()
    assert counter.total == 0


def test_shapes_pipeline():
    kwargs = dict(batch_size=16, image_size=32, num_examples=64, seed=5)
    ds = make_clip_dataset("shapes", **kwargs)
    assert ds.element_spec == {"images": tf.TensorSpec([16, 32, 32, 3], tf.float32),
                               "token_ids": tf.TensorSpec([16, 77], tf.int32)}
    a = [b["token_ids"].numpy() for b in ds]
    b = [b["token_ids"].numpy() for b in make_clip_dataset("shapes", **kwargs)]
    assert len(a) == 4 and all((x == y).all() for x, y in zip(a, b))  # deterministic by seed
    data = shapes.generate_shapes(64, image_size=32, seed=5)
    assert not (a[0] == tokenize(data["captions"][:16])).all()  # shuffled (train default)
    plain = next(iter(make_clip_dataset("shapes", split="val", image_format="uint8",
                                        **kwargs)))
    val = shapes.generate_shapes(64, split="val", image_size=32, seed=5)
    np.testing.assert_array_equal(plain["images"], val["images"][:16])  # identity resize
    np.testing.assert_array_equal(plain["token_ids"], tokenize(val["captions"][:16]))
    unit = next(iter(make_clip_dataset("shapes", split="val", image_format="unit", **kwargs)))
    np.testing.assert_allclose(unit["images"], val["images"][:16] / 255.0, atol=1e-6)
    clip = next(iter(make_clip_dataset("shapes", split="val", **kwargs)))
    np.testing.assert_allclose(clip["images"], CLIPImagePreprocessor(32)(val["images"][:16]),
                               atol=1e-5)


def test_distribute_dataset(shards):
    root, _ = shards
    strategy = tf.distribute.get_strategy()
    for source in ("shapes", str(root / "00001.tar")):
        ds = make_clip_dataset(source, batch_size=8, image_size=IMAGE_SIZE, num_examples=32,
                               tokenizer=None if source == "shapes" else _stub_tokenizer)
        batch = next(iter(strategy.experimental_distribute_dataset(ds)))
        assert batch["images"].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
        assert batch["token_ids"].shape == (8, 77)
