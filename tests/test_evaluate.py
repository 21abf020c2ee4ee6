"""keras_clip.evaluate / keras_clip.metrics / keras_clip.data.imagefolder: metrics on cases with
known answers, the CLIP_benchmark result JSON, ImageFolder errors, skipped images, the linear
probe's validation split, figures, the WiSE-FT sweep and TensorBoard output."""

import csv
import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_clip import evaluate as ev
from keras_clip.data.imagefolder import read_image_folder
from keras_clip.metrics import (classification_metrics, confusion_matrix, mean_per_class_recall,
                                per_class_table, retrieval_recall, topk_accuracy)
from keras_clip.model import CLIP
from keras_clip.text.tokenizer import tokenize

PNG = b"\x89PNG\r\n\x1a\n"
CLIP_BENCHMARK_KEYS = {"dataset", "model", "pretrained", "task", "metrics", "language"}


# ----------------------------------------------------------------------------------------------
# Metrics against brute force / known answers

def test_topk_accuracy_and_classification_metrics_known_case():
    scores = np.array([[0.9, 0.1, 0.0],    # label 0: top-1
                       [0.5, 0.4, 0.1],    # label 1: 2nd
                       [0.5, 0.4, 0.1],    # label 2: 3rd
                       [0.2, 0.2, 0.6]])   # label 1: tie with 0 at 2nd place, index 0 first
    labels = np.array([0, 1, 2, 1])
    assert topk_accuracy(scores, labels, (1, 2, 3)) == {1: 0.25, 2: 0.5, 3: 1.0}
    m = classification_metrics(scores, labels)
    assert m["acc1"] == 0.25 and m["acc5"] is None  # fewer than 5 classes: undefined
    # predictions 0, 0, 0, 2: class 0 recall 1, class 1 0/2, class 2 0/1
    assert m["mean_per_class_recall"] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(confusion_matrix(labels, [0, 0, 0, 2], 3),
                                  [[1, 0, 0], [1, 0, 1], [1, 0, 0]])


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_mean_per_class_recall_is_balanced_accuracy():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 200)
    labels[labels == 3] = 4  # a class that never occurs
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 7, 200))
    assert mean_per_class_recall(labels, predictions, 7) == pytest.approx(
        balanced_accuracy_score(labels, predictions))


def test_per_class_table():
    rows = per_class_table([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], ["cat", "dog", "owl"])
    assert rows[0] == {"class": "cat", "support": 2, "correct": 1, "recall": 0.5,
                       "precision": 0.5, "most_confused_with": "dog"}
    assert rows[1]["recall"] == pytest.approx(2 / 3) and rows[1]["precision"] == pytest.approx(2 / 3)
    assert rows[2] == {"class": "owl", "support": 0, "correct": 0, "recall": None,
                       "precision": None, "most_confused_with": None}


def _brute_force_recall(img, txt, text_image_index, k):
    t2i, i2t = [], []
    for t in range(len(txt)):  # text -> image: is the caption's image in its top k?
        ranked = sorted(range(len(img)), key=lambda i: (-float(txt[t] @ img[i]), i))
        t2i.append(text_image_index[t] in ranked[:k])
    for i in range(len(img)):  # image -> text: is any of its captions in its top k?
        ranked = sorted(range(len(txt)), key=lambda t: (-float(txt[t] @ img[i]), t))
        i2t.append(any(text_image_index[t] == i for t in ranked[:k]))
    return float(np.mean(t2i)), float(np.mean(i2t))


def test_retrieval_recall_matches_brute_force():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(12, 6))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    index = np.repeat(np.arange(12), 2)[:20]  # two captions per image, the last 2 images none
    txt = img[index] + rng.normal(scale=0.8, size=(20, 6))
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    got = retrieval_recall(img, txt, index, ks=(1, 3, 5))
    assert 0 < got["image_retrieval_recall@1"] < 1  # a case where ranking matters
    for k in (1, 3, 5):
        t2i, i2t = _brute_force_recall(img, txt, index, k)
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
        assert got[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)


def test_retrieval_recall_on_hand_made_embeddings():
    img = np.eye(3)
    txt = np.array([[0, 1, 0], [1, 0, 0], [1, 0, 0.0]])  # captions of images 0, 1, 2
    got = retrieval_recall(img, txt, [0, 1, 2], ks=(1, 2))
    # Text -> image, ties broken by index: caption 0 ranks images 1, 0, 2 (hit at 2); caption
    # 1 ranks 0, 1, 2 (hit at 2); caption 2 ranks 0, 1, 2 (its image 2 is third).
    assert got["image_retrieval_recall@1"] == 0.0
    assert got["image_retrieval_recall@2"] == pytest.approx(2 / 3)
    # Image -> text: image 0 ranks captions 1, 2, 0; image 1 ranks 0, 1, 2; image 2 (all scores
    # 0) ranks 0, 1, 2: only image 1 finds its caption in the top 2.
    assert got["text_retrieval_recall@1"] == 0.0
    assert got["text_retrieval_recall@2"] == pytest.approx(1 / 3)
    # Identical captions (1 and 2) matching each other's images: caption 2 hits at 2.
    positives = np.array([[1, 0, 0], [0, 1, 1], [0, 1, 1]], bool)
    assert retrieval_recall(img, txt, [0, 1, 2], (2,), positives)["image_retrieval_recall@2"] == 1.0


# ----------------------------------------------------------------------------------------------
# ImageFolder

def _write_png(path, rgb, size=40):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size, 3), rgb, np.uint8)).save(path)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        read_image_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    (empty / "dog").mkdir()
    (empty / "dog" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no images in ImageFolder"):
        read_image_folder(empty)
    loose = tmp_path / "loose"
    _write_png(str(loose / "a.png"), (1, 2, 3))
    with pytest.raises(ValueError, match="lie directly in"):
        read_image_folder(loose)
    one = tmp_path / "one"
    _write_png(str(one / "cat" / "a.png"), (1, 2, 3))
    with pytest.raises(ValueError, match="has 1 class folder.*at least 2"):
        read_image_folder(one)
    _write_png(str(empty / "cat" / "a.png"), (1, 2, 3))
    with pytest.raises(ValueError, match=r"class folder\(s\) \['dog'\] hold no images"):
        read_image_folder(empty)


def test_image_folder_listing_and_classnames(tmp_path):
    root = tmp_path / "data"
    _write_png(str(root / "golden_retriever" / "b.png"), (1, 1, 1))
    _write_png(str(root / "golden_retriever" / "sub" / "a.JPG.png"), (1, 1, 1))
    _write_png(str(root / "tabby_cat" / "c.png"), (1, 1, 1))
    (root / ".hidden").mkdir()
    folder = read_image_folder(root)
    assert folder.classnames == ["golden retriever", "tabby cat"]
    assert folder.labels.tolist() == [0, 0, 1]
    names = tmp_path / "names.txt"
    names.write_text("dog\n\ncat\n")
    assert read_image_folder(root, classnames=str(names)).classnames == ["dog", "cat"]
    with pytest.raises(ValueError, match="3 class names for 2 class folders"):
        read_image_folder(root, classnames=["a", "b", "c"])


def test_image_folder_dataset_skips_and_counts_a_file_that_vanished_after_listing(colour_folder):
    from keras_clip.data.imagefolder import image_folder_dataset

    folder = read_image_folder(colour_folder)
    os.remove(folder.paths[0])  # listed, then gone: unreadable
    ds = image_folder_dataset(folder, image_size=32, batch_size=4)
    labels = np.concatenate([b["labels"].numpy() for b in ds])
    # 7 listed: the vanished one and the corrupt JPEG are dropped, the 5 others kept in order.
    assert len(folder.paths) == 7 and labels.tolist() == [0, 0, 1, 1, 1]
    assert ds.skip_counter["bad_image"] == 2
    ds.skip_counter.reset()
    assert sum(len(b["labels"]) for b in ds) == 5 and ds.skip_counter["bad_image"] == 2  # again


# ----------------------------------------------------------------------------------------------
# A model whose answers are known: colour features against colour words

RED, GREEN = (int(tokenize("red")[0, 1]), int(tokenize("green")[0, 1]))


class ColourModel:
    """Image features (mean normalised R, mean normalised G); a prompt containing "red" embeds
    as (1, -1), any other as (-1, 1). Red images score red, green images green."""

    image_size = 32
    context_length = 77

    def encode_image(self, images):
        return tf.reduce_mean(tf.convert_to_tensor(images)[..., :2], axis=[1, 2])

    def encode_text(self, ids):
        red = tf.reduce_any(tf.equal(tf.convert_to_tensor(ids), RED), axis=1)[:, None]
        return tf.where(red, tf.constant([[1.0, -1.0]]), tf.constant([[-1.0, 1.0]]))


@pytest.fixture()
def colour_folder(tmp_path):
    """red/: 2 red images + 1 green one (misfiled) + 1 corrupt file; green/: 3 green images."""
    root = tmp_path / "colours"
    for i in range(2):
        _write_png(str(root / "red" / f"r{i}.png"), (220, 20, 20))
    _write_png(str(root / "red" / "misfiled.png"), (20, 200, 30))
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    for i in range(3):
        _write_png(str(root / "green" / f"g{i}.png"), (30, 210, 40), size=48)
    return root


def _no_temporary_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_zero_shot_classification_known_confusion_matrix_and_skipped_image(colour_folder, tmp_path):
    out = tmp_path / "out" / "colours.json"
    results = ev.evaluate(ColourModel(), str(colour_folder), "zeroshot_classification", str(out),
                          templates=["a photo of a {}."], progress=False)
    written = json.loads(out.read_text())
    assert written == results
    assert CLIP_BENCHMARK_KEYS <= set(written)
    assert written["task"] == "zeroshot_classification" and written["dataset"] == str(colour_folder)
    assert set(written["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    # Labels: green=0, red=1 (sorted folders). green: 3/3 right; red: 2 red right, 1 green wrong.
    assert written["classnames"] == ["green", "red"]
    assert written["metrics"]["acc1"] == pytest.approx(5 / 6)
    assert written["metrics"]["acc5"] is None
    assert written["metrics"]["mean_per_class_recall"] == pytest.approx((1 + 2 / 3) / 2)
    assert written["num_examples"] == 6
    assert written["skipped"]["bad_image"] == 1  # the corrupt file: skipped and counted
    assert written["per_class"][1] == {"class": "red", "support": 3, "correct": 2,
                                       "recall": pytest.approx(2 / 3), "precision": 1.0,
                                       "most_confused_with": "green"}
    png = out.parent / written["files"]["confusion_matrix"]
    assert png.read_bytes()[:8] == PNG
    with open(out.parent / written["files"]["per_class"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["green", "red"] and rows[1]["support"] == "3"
    assert _no_temporary_files(out.parent)


def test_classification_data_errors(tmp_path, colour_folder):
    one = tmp_path / "one"
    _write_png(str(one / "cat" / "a.png"), (1, 2, 3))
    with pytest.raises(ValueError, match="at least 2"):
        ev.evaluate(ColourModel(), str(one), "zeroshot_classification", progress=False)
    with pytest.raises(ValueError, match="classification needs labelled images"):
        ev.evaluate(ColourModel(), str(tmp_path / "x.tar"), "zeroshot_classification",
                    progress=False)
    with pytest.raises(ValueError, match="retrieval needs captions"):
        ev.evaluate(ColourModel(), str(colour_folder), "zeroshot_retrieval", progress=False)
    with pytest.raises(ValueError, match="unknown shapes split 'test'"):
        ev.parse_data("shapes:test")
    with pytest.raises(ValueError, match="task must be one of"):
        ev.evaluate(ColourModel(), "shapes", "captioning")


# ----------------------------------------------------------------------------------------------
# Linear probe

def _tilted(n, rng):
    """Two classes separable along v but spread along u, their means apart mostly along u: a
    mean-difference classifier (strong regularisation, small C) and a max-margin one (large C)
    disagree."""
    u, v = np.array([1.0, 1.0]) / np.sqrt(2), np.array([1.0, -1.0]) / np.sqrt(2)
    y = rng.integers(0, 2, n)
    s = rng.uniform(-4, 4, n)
    x = s[:, None] * u + np.where(y == 1, -0.3, 0.3)[:, None] * v + 3.0 * y[:, None] * u
    return x, y


def test_linear_probe_picks_c_on_the_validation_split():
    rng = np.random.default_rng(0)
    (x, y), (vx, vy), (tx, ty) = _tilted(200, rng), _tilted(100, rng), _tilted(100, rng)
    m, d = ev.linear_probe(x, y, tx, ty, 2, val=(vx, vy), progress=False)
    assert {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "C"} <= set(m)
    assert m["val_acc1"] == max(d["c_sweep"].values()) == 1.0
    assert m["C"] >= 0.1 and m["lp_acc1"] == 1.0  # the separating (weakly regularised) fit
    # The CLIP paper's search: 7 starting values, then steps of 8, 4, 2, 1 around the peak.
    assert {1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6} <= set(np.round(list(d["c_sweep"]), 12))
    assert len(d["c_sweep"]) <= 7 + 4 * 2
    # Validation labels that follow the spread direction instead favour a small C: the choice
    # follows the validation set (and the test accuracy pays for it).
    vy_u = (vx @ (np.array([1.0, 1.0]) / np.sqrt(2)) > 1.5).astype(int)
    m2, d2 = ev.linear_probe(x, y, tx, ty, 2, val=(vx, vy_u), progress=False)
    assert m2["C"] <= 0.01 < m["C"] and m2["val_acc1"] == max(d2["c_sweep"].values())
    assert m2["lp_acc1"] < m["lp_acc1"]
    # Without val=, a seeded share of the training data is held out.
    m3, _ = ev.linear_probe(x, y, tx, ty, 2, val_fraction=0.25, seed=3, progress=False)
    assert m3["lp_acc1"] == 1.0 and m3["seed"] == 3
    with pytest.raises(ValueError, match="need at least 2"):
        ev.linear_probe(x, np.zeros_like(y), tx, ty, 2, progress=False)


def test_linear_probe_on_image_folders(colour_folder, tmp_path):
    out = tmp_path / "lp.json"
    results = ev.evaluate(ColourModel(), str(colour_folder), "linear_probe", str(out),
                          train_data=str(colour_folder), val_fraction=0.4, progress=False)
    assert CLIP_BENCHMARK_KEYS <= set(results)
    assert {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "C", "normalized"} <= set(
        results["metrics"])
    assert results["skipped"]["bad_image"] == 2  # once in the training, once in the test data
    assert (tmp_path / results["files"]["confusion_matrix"]).read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="needs training data"):
        ev.evaluate(ColourModel(), str(colour_folder), "linear_probe", progress=False)


# ----------------------------------------------------------------------------------------------
# Real (tiny) CLIPs: retrieval, similarity, the WiSE-FT sweep, the CLI, TensorBoard

@pytest.fixture(scope="module")
def tiny_pair():
    keras.utils.set_random_seed(0)
    a = CLIP.from_preset("ViT-Tiny")
    keras.utils.set_random_seed(1)
    return a, CLIP.from_preset("ViT-Tiny")


def test_retrieval_json_has_clip_benchmark_keys(tiny_pair, tmp_path):
    results = ev.evaluate(tiny_pair[0], "shapes:val", "zeroshot_retrieval",
                          str(tmp_path / "r.json"), num_examples=24, progress=False)
    assert CLIP_BENCHMARK_KEYS <= set(results) and results["num_examples"] == 24
    assert set(results["metrics"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text")
                                       for k in (1, 5, 10)}
    assert all(0 <= v <= 1 for v in results["metrics"].values())


def test_similarity_figure(tiny_pair, tmp_path):
    out = tmp_path / "sim.json"
    results = ev.evaluate(tiny_pair[0], "shapes:val", "similarity", str(out),
                          similarity_count=3, progress=False)
    assert np.array(results["similarity"]).shape == (3, 3) and len(results["captions"]) == 3
    assert (tmp_path / "sim.similarity.png").read_bytes()[:8] == PNG
    assert _no_temporary_files(tmp_path)


def test_similarity_json_and_figure_say_what_rows_and_columns_are(tiny_pair, tmp_path):
    # Was (new-user trial): the JSON's matrix is images x captions, the PNG's rows are captions,
    # and neither said so.
    results = ev.evaluate(tiny_pair[0], "shapes:val", "similarity", str(tmp_path / "s.json"),
                          similarity_count=2, progress=False)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["rows"] == "images" and saved["columns"] == "captions"
    sim = np.array(saved["similarity"])
    images, captions = ev.captioned_images("shapes:val", 2, tiny_pair[0].image_size)
    assert captions == saved["captions"] == results["captions"]
    # Row i is image i: image 0 against caption 1 is entry [0, 1].
    want = ev.similarity_matrix(tiny_pair[0], images[:1], captions[1:])[0, 0]
    assert abs(sim[0, 1] - want) < 1e-3
    ax = ev._similarity_figure(sim, images, captions).axes[0]
    assert ax.get_ylabel().startswith("captions") and "JSON's columns" in ax.get_ylabel()
    assert ax.get_xlabel().startswith("images") and "JSON's rows" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == captions


def test_wise_ft_sweep_endpoints_are_the_two_models_and_tensorboard_gets_the_scalars(
        tiny_pair, tmp_path):
    a, b = tiny_pair
    kwargs = dict(num_examples=40, progress=False)
    alone_a = ev.evaluate(a, "shapes:val", "zeroshot_classification", **kwargs)["metrics"]
    alone_b = ev.evaluate(b, "shapes:val", "zeroshot_classification", **kwargs)["metrics"]
    assert alone_a != alone_b
    logdir = tmp_path / "tb"
    results = ev.evaluate(b, "shapes:val", "zeroshot_classification", str(tmp_path / "w.json"),
                          wise_ft_zero_shot=a, alphas=[0.0, 0.5, 1.0], logdir=str(logdir),
                          **kwargs)
    sweep = results["wise_ft"]["sweep"]
    assert [s["alpha"] for s in sweep] == [0.0, 0.5, 1.0]
    assert sweep[0]["metrics"] == alone_a and sweep[2]["metrics"] == alone_b
    assert results["metrics"] == alone_b
    assert (tmp_path / "w.wise_ft.png").read_bytes()[:8] == PNG
    tags = {}
    for path in logdir.iterdir():
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for v in event.summary.value:
                tags.setdefault(v.tag, []).append(event.step)
    assert sorted(tags["zeroshot_classification/shapes:val/acc1"]) == [0, 50, 100]
    assert "zeroshot_classification/shapes:val/confusion_matrix" in tags
    with pytest.raises(ValueError, match="differ in architecture"):
        keras.utils.set_random_seed(2)
        ev.evaluate(CLIP.from_preset("ViT-Tiny", vision_layers=3), "shapes:val",
                    "zeroshot_classification", wise_ft_zero_shot=a, **kwargs)


def test_cli(tiny_pair, colour_folder, tmp_path, capsys):
    from keras_clip.saving import save_model_atomic

    model = save_model_atomic(tiny_pair[0], tmp_path / "clip.keras")
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\na {} thing.\n")
    out = tmp_path / "res" / "cli.json"
    ev.main(["--model", model, "--data", str(colour_folder), "--task",
             "zeroshot_classification", "--templates", str(templates), "--out", str(out),
             "--no-progress"])
    results = json.loads(out.read_text())
    assert results["model"] == model and results["templates"] == ["a photo of a {}.",
                                                                  "a {} thing."]
    assert results["ensemble"] == "mean" and results["skipped"]["bad_image"] == 1
    assert "wrote" in capsys.readouterr().out
    one = tmp_path / "one"
    _write_png(str(one / "cat" / "a.png"), (1, 2, 3))
    with pytest.raises(SystemExit) as e:
        ev.main(["--model", model, "--data", str(one), "--task", "zeroshot_classification",
                 "--out", str(tmp_path / "x.json"), "--no-progress"])
    assert e.value.code == 2
    assert re.search("evaluate: error: ImageFolder .* has 1 class folder", capsys.readouterr().err)
    with pytest.raises(SystemExit) as e:
        ev.main(["--model", model, "--data", "shapes", "--task", "zeroshot_classification",
                 "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2 and "--out must end in .json" in capsys.readouterr().err


def test_retrieval_and_similarity_on_a_caption_shard_skip_unreadable_images(tiny_pair, tmp_path):
    rows = ["filepath\ttitle"]
    colours = {"red": (220, 20, 20), "green": (30, 210, 40), "blue": (30, 60, 220)}
    for name, rgb in colours.items():
        _write_png(str(tmp_path / "img" / f"{name}.png"), rgb)
        rows.append(f"img/{name}.png\ta {name} square")
    rows.append("img/missing.png\ta lost picture")  # unreadable: skipped and counted
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png at all")
    rows.append("img/bad.png\ta broken picture")
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("\n".join(rows) + "\n")
    results = ev.evaluate(tiny_pair[0], str(tsv), "zeroshot_retrieval", str(tmp_path / "r.json"),
                          num_examples=None, progress=False)
    assert results["num_examples"] == 3 and results["skipped"]["bad_image"] == 2
    # 3 pairs: recall@5 and @10 find everything.
    assert results["metrics"]["image_retrieval_recall@5"] == 1.0
    assert results["metrics"]["text_retrieval_recall@10"] == 1.0
    sim = ev.evaluate(tiny_pair[0], str(tsv), "similarity", str(tmp_path / "s.json"),
                      similarity_count=8, progress=False)
    assert sim["captions"] == ["a red square", "a green square", "a blue square"]
    assert sim["skipped"]["bad_image"] == 2
    assert (tmp_path / "s.similarity.png").read_bytes()[:8] == PNG


def test_the_cli_reads_a_comma_separated_csv_as_the_trainer_does(tiny_pair, tmp_path, capsys):
    # Was (new-user trial): "no column ... in the header ['filepath,title']" for a .csv with
    # a comma-separated "filepath,title" header.
    from keras_clip.saving import save_model_atomic

    model = save_model_atomic(tiny_pair[0], tmp_path / "clip.keras")
    rows = ["filepath,title"]
    for name, rgb in {"red": (220, 20, 20), "blue": (30, 60, 220)}.items():
        _write_png(str(tmp_path / "img" / f"{name}.png"), rgb)
        rows.append(f'img/{name}.png,"a {name} square, small"')
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "s.json"
    ev.main(["--model", model, "--data", str(tmp_path / "pairs.csv"), "--task", "similarity",
             "--out", str(out), "--no-progress"])
    results = json.loads(out.read_text())
    assert results["captions"] == ["a red square, small", "a blue square, small"]
    assert results["skipped"]["bad_record"] == 0 and results["num_examples"] == 2
