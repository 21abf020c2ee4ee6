"""export.search_signature: the `search` / `search_image` signatures of a CLIP SavedModel with a
collection's embeddings inside (export.saved_model --index)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the SavedModel uses TF Text ops)

from export import saved_model as sm
from export import search_signature as ss
from export import serving_config as sc
from keras_clip.model import CLIP
from keras_clip.preprocessing import preprocess_images
from keras_clip.text.tokenizer import tokenize

from test_export_saved_model import (TF_TEXT_OPS, _core_ops, _graph_ops,  # noqa: E402
                                     _normalize, _png)


def build_index(model, images, root, captions=None, batch_size=4):
    """Write ``images`` (encoded bytes) as files ``root/photos/img_XX.png`` (with a .txt caption
    beside each when ``captions`` is given) and embed them with ``keras_clip.embed`` into
    ``root/index`` (float16, shards of ``2 * batch_size``); returns (index dir, ids, file names)
    with ids in the order of ``images``."""
    from keras_clip.embed import embed_images

    photos = os.path.join(root, "photos")
    os.makedirs(photos, exist_ok=True)
    names = [f"img_{i:02d}.png" for i in range(len(images))]
    for i, (name, data) in enumerate(zip(names, images)):
        with open(os.path.join(photos, name), "wb") as f:
            f.write(data)
        if captions:
            with open(os.path.join(photos, name[:-4] + ".txt"), "w") as f:
                f.write(captions[i])
    out = os.path.join(root, "index")
    embed_images(model, photos, out, batch_size=batch_size, shard_size=2 * batch_size,
                 strategy="default", jit_compile=False, progress=False)
    collection = ss.load_collection(out)
    by_name = dict(zip(collection.paths, collection.ids))
    return out, [by_name[n] for n in names], names


def embed_images_np(model, images):
    return _normalize(model.encode_image(preprocess_images(images, image_size=model.image_size)))


@pytest.fixture(scope="module")
def searchable(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset("ViT-Tiny")
    root = tmp_path_factory.mktemp("search")
    images = [_png(32 + 4 * i, 40, 100 + i) for i in range(7)]
    index, ids, _ = build_index(model, images, str(root))
    # Through the CLI (one export for the whole module: exports are slow on a busy CPU).
    model_path = str(root / "clip.keras")
    model.save(model_path)
    assert sm.main([model_path, "--base-path", str(root / "clip"), "--index", index]) == 0
    path = str(root / "clip" / "1")
    return dict(model=model, images=images, ids=ids, index=index, path=path,
                loaded=tf.saved_model.load(path))


def test_search_signatures_and_shapes(searchable):
    sigs = searchable["loaded"].signatures
    assert set(sm.SIGNATURES) | set(ss.SEARCH_SIGNATURES) <= set(sigs)
    search = sigs["search"]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in
            search.structured_input_signature[1].items()} == \
        {"texts": (tf.string, [None]), "k": (tf.int32, [None])}
    assert {k: (v.dtype, v.shape.as_list()) for k, v in search.structured_outputs.items()} == \
        {"ids": (tf.string, [None, None]), "scores": (tf.float32, [None, None])}
    out = search(texts=tf.constant(["a", "b", "c"]), k=tf.constant([4, 4, 4]))
    assert out["ids"].shape == (3, 4) and out["scores"].shape == (3, 4)


def test_text_search_is_exact_top_k(searchable):
    model, ids = searchable["model"], searchable["ids"]
    texts = ["a red circle", "two blue squares"]
    out = searchable["loaded"].signatures["search"](texts=tf.constant(texts), k=tf.constant([7]))
    coll = ss.load_collection(searchable["index"]).embeddings  # float16 rows, as stored
    want = _normalize(model.encode_text(tokenize(texts))) @ _normalize(coll).T
    order = np.argsort(-want, axis=1)
    got_ids = out["ids"].numpy().astype(str)
    np.testing.assert_allclose(out["scores"].numpy(), np.take_along_axis(want, order, 1),
                               atol=1e-5)
    # Same order as numpy's (ties aside: random embeddings have none at this precision).
    assert got_ids.tolist() == [[ids[j] for j in row] for row in order]
    assert np.all(np.diff(out["scores"].numpy(), axis=1) <= 0)


def test_image_search_finds_the_image_itself(searchable):
    images, ids = searchable["images"], searchable["ids"]
    query = [images[3], images[5]]
    out = searchable["loaded"].signatures["search_image"](images=tf.constant(query),
                                                          k=tf.constant([2, 2]))
    assert out["ids"].numpy()[:, 0].astype(str).tolist() == [ids[3], ids[5]]
    # float16 storage: the image matches its own row to ~1e-3, and clearly better than the next.
    np.testing.assert_allclose(out["scores"].numpy()[:, 0], 1.0, atol=2e-3)


@pytest.mark.parametrize("k, texts, message", [
    ([0], ["a"], r"k must be between 1 and the collection size \(7 images\), got \[0\]"),
    ([8], ["a"], r"k must be between 1 and the collection size \(7 images\), got \[8\]"),
    ([-1], ["a"], r"k must be between 1 and the collection size"),
    ([2, 3], ["a", "b"], r"k: all values must be equal \(one k per request\), got \[2 3\]"),
    ([2, 2, 2], ["a", "b"], r"got 3 values for a batch of 2"),
    ([], ["a"], r"k: expected one value per query"),
    ([2], [], r"texts: empty batch"),
])
def test_bad_k_and_empty_batches_are_named(searchable, k, texts, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        searchable["loaded"].signatures["search"](texts=tf.constant(texts, tf.string),
                                                  k=tf.constant(k, tf.int32))


def test_image_search_refuses_non_images(searchable):
    with pytest.raises(tf.errors.InvalidArgumentError, match="not an encoded image"):
        searchable["loaded"].signatures["search_image"](images=tf.constant([b"hello"]),
                                                        k=tf.constant([1]))


def test_only_tf_core_and_tf_text_ops(searchable):
    ops = _graph_ops(searchable["path"])
    assert not ops - _core_ops() - TF_TEXT_OPS, ops - _core_ops() - TF_TEXT_OPS
    assert "TopKV2" in ops


def test_collection_is_stored_in_the_variables(searchable):
    reader = tf.train.load_checkpoint(os.path.join(searchable["path"], "variables", "variables"))
    names = reader.get_variable_to_shape_map()
    emb = [n for n in names if "collection_embeddings" in n]
    assert len(emb) == 1 and names[emb[0]] == [7, 32]
    id_var = [n for n in names if "collection_ids" in n]
    assert reader.get_tensor(id_var[0]).astype(str).tolist() == searchable["ids"]


def test_warmup_covers_the_search_signatures(searchable):
    sigs = [r.model_spec.signature_name for r in sc.read_warmup_requests(searchable["path"])]
    assert sigs == ["serving_default", "encode_text", "encode_image", "zero_shot", "search",
                    "search_image"]


def test_collection_matches_the_model_and_the_files(searchable):
    collection = ss.load_collection(searchable["index"])
    np.testing.assert_allclose(collection.embeddings,
                               embed_images_np(searchable["model"], searchable["images"])[
                                   np.argsort(np.array(searchable["ids"], int))], atol=2e-3)
    files = [collection.image_file(i) for i in range(len(collection.ids))]
    assert all(open(f, "rb").read() in searchable["images"] for f in files)


def test_index_errors_are_named(searchable, tmp_path):
    keras.utils.set_random_seed(1)
    narrow = CLIP.from_preset("ViT-Tiny", embed_dim=16)
    with pytest.raises(ValueError, match="embedding size is 16, the index's 32"):
        ss.CLIPSearchModule.from_index(narrow, searchable["index"])
    with pytest.raises(ValueError, match="64px images, the index was embedded at 32px"):
        ss.CLIPSearchModule.from_index(CLIP.from_preset("RN-Tiny"), searchable["index"])
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        ss.load_collection(str(tmp_path))
    model = searchable["model"]
    with pytest.raises(ValueError, match="2 ids for 3 embeddings"):
        ss.CLIPSearchModule(model, np.ones((3, 32)), ["a", "b"])
    with pytest.raises(ValueError, match="D=16 but the model's embed_dim is 32"):
        ss.CLIPSearchModule(model, np.ones((3, 16)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="all zeros"):
        ss.CLIPSearchModule(model, np.zeros((3, 32)), ["a", "b", "c"])


def test_cli_refuses_a_missing_index(searchable, tmp_path, capsys):
    model_path = str(tmp_path / "clip.keras")
    searchable["model"].save(model_path)
    assert sm.main([model_path, "--base-path", str(tmp_path / "clip"), "--index",
                    str(tmp_path / "nowhere")]) == 2
    assert "embedding folder not found" in capsys.readouterr().err
    base = tmp_path / "clip"
    assert not base.exists() or not os.listdir(base)  # no version, no temporary directory
