"""keras_clip.index.ImageIndex: exact search equals brute force, loading a job's folder, text and
image queries through the model, ANN (FAISS) recall, and clear errors."""

import io
import json
import os

import keras_clip  # noqa: F401
import numpy as np
import pytest
from PIL import Image

from keras_clip.embed import embed_images
from keras_clip.index import ImageIndex, exact_search
from keras_clip.model import CLIP
from keras_clip.text.tokenizer import tokenize

from test_embed import make_folder


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _brute(emb, q, k):
    s = q @ emb.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("n,k,chunk", [(1000, 10, 97), (1000, 1, None), (50, 50, 7),
                                       (257, 13, 256)])
def test_exact_search_equals_brute_force(n, k, chunk):
    rng = np.random.default_rng(n + k)
    emb, q = _unit(rng.normal(size=(n, 24))), _unit(rng.normal(size=(9, 24)))
    index = ImageIndex(emb)
    result = index.search_embeddings(q, k=k, chunk_size=chunk)
    scores, order = _brute(emb, q, k)
    assert result.scores.shape == (9, k) and result.scores.dtype == np.float32
    np.testing.assert_array_equal(result.indices, order)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-6, atol=1e-6)
    assert result.ids == [[str(i) for i in row] for row in order]


def test_ties_are_in_row_order():
    emb = _unit(np.repeat(np.eye(4, 8), 3, axis=0))  # rows 0-2, 3-5 … are identical
    scores, indices = exact_search(emb, emb[[3]], 6, chunk_size=2)
    assert indices.tolist() == [[3, 4, 5, 0, 1, 2]]
    assert scores[0, :3].tolist() == [1, 1, 1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    model = CLIP.from_preset("ViT-Tiny")
    root = str(tmp_path_factory.mktemp("imgs"))
    images = make_folder(root, n=12, seed=3)
    out = str(tmp_path_factory.mktemp("index") / "out")
    embed_images(model, root, out, batch_size=4, shard_size=8, strategy="default",
                 jit_compile=False, progress=False)
    return model, root, images, out


def test_load_and_query_with_texts_and_images(job):
    model, root, images, out = job
    index = ImageIndex.load(out, model=model)
    assert len(index) == 12 and index.embeddings.dtype == np.float32
    assert index.embeddings.shape == (12, 32) and index.manifest["count"] == 12
    assert index.paths == sorted(images) and len(index.ids) == 12
    assert index.captions == [images[p][1] for p in index.paths]
    # An image query finds itself first (bytes and a file path give the same answer).
    path = index.paths[5]
    by_path = index.search(images=os.path.join(root, path), k=3)
    by_bytes = index.search(images=[images[path][0]], k=3)
    assert by_path.paths[0][0] == path and by_path.ids[0][0] == index.ids[5]
    assert by_path.scores[0, 0] == pytest.approx(1.0, abs=2e-3)
    np.testing.assert_array_equal(by_path.indices, by_bytes.indices)
    # Text queries: the same ranking as encoding the tokens by hand and searching brute force.
    texts = ["a red square", "picture number 4"]
    result = index.search(texts=texts, k=5)
    q = _unit(model.encode_text(tokenize(texts)))
    scores, order = _brute(index.embeddings, q, 5)
    np.testing.assert_array_equal(result.indices, order)
    np.testing.assert_allclose(result.scores, scores, atol=1e-5)
    assert result.captions[0] == [index.captions[i] for i in order[0]]
    # A uint8 array goes through the same image path as the PNG it came from.
    png = images["img000.png"][0]
    arr = np.asarray(Image.open(io.BytesIO(png)))[None]
    assert arr.shape[-1] == 3
    np.testing.assert_array_equal(index.encode_images(arr), index.encode_images([png]))


def test_model_passed_to_search_and_errors(job, tmp_path):
    model, root, images, out = job
    index = ImageIndex.load(out)
    with pytest.raises(ValueError, match="need a CLIP model"):
        index.search(texts=["a dog"])
    assert index.search(texts=["a dog"], k=2, model=model).scores.shape == (1, 2)
    with pytest.raises(ValueError, match="exactly one of texts= or images="):
        index.search(texts=["a"], images=["b"], model=model)
    for k in (0, -1, 13):
        with pytest.raises(ValueError, match=r"k must be in \[1, 12\] \(the collection size\)"):
            index.search(texts=["a dog"], k=k, model=model)
    with pytest.raises(TypeError, match="k must be an integer"):
        index.search_embeddings(np.zeros(32), k=2.5)
    with pytest.raises(ValueError, match=r"queries must be \(B, 32\), got shape \(1, 16\)"):
        index.search_embeddings(np.zeros((1, 16)), k=2)
    with pytest.raises(ValueError, match="model/index mismatch: the model's embedding size is "
                                         "16, the index's 32"):
        index.search(texts=["a"], model=CLIP.from_preset("ViT-Tiny", embed_dim=16))
    with pytest.raises(ValueError, match="model/index mismatch: the model takes 64px images, "
                                         "the index was embedded at 32px"):
        ImageIndex.load(out, model=CLIP.from_preset("RN-Tiny"))
    with pytest.raises(ValueError, match=r"another architecture .*vision_width: 64 vs 32"):
        ImageIndex.load(out, model=CLIP.from_preset("ViT-Tiny", vision_width=32))
    with pytest.raises(FileNotFoundError, match="query image 0 not found"):
        index.search(images=[str(tmp_path / "nope.jpg")], model=model)
    with pytest.raises(ValueError, match="not a decodable image"):
        index.search(images=[b"garbage bytes"], model=model)
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        ImageIndex.load(root)
    with pytest.raises(FileNotFoundError, match="embedding folder not found"):
        ImageIndex.load(str(tmp_path / "missing"))
    # A shard that disagrees with the manifest.
    broken = tmp_path / "broken"
    os.makedirs(broken / "img_emb")
    os.makedirs(broken / "metadata")
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    for name in ("img_emb", "metadata"):
        for f in os.listdir(os.path.join(out, name)):
            os.link(os.path.join(out, name, f), broken / name / f)
    n = manifest["shards"][0]["count"]
    manifest["shards"][0]["count"] += 1
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"img_emb_00000.npy: shape \({n}, 32\), the manifest "
                                         rf"says \({n + 1}, 32\)"):
        ImageIndex.load(str(broken))


def test_ann_recall_and_exact_override():
    faiss = pytest.importorskip("faiss")  # noqa: F841
    rng = np.random.default_rng(0)
    centers = _unit(rng.normal(size=(50, 64)))
    emb = _unit(centers[rng.integers(0, 50, 5000)] + 0.35 * rng.normal(size=(5000, 64)) / 8)
    q = _unit(emb[rng.integers(0, 5000, 100)] + 0.05 * rng.normal(size=(100, 64)))
    index = ImageIndex(emb)
    exact = index.search_embeddings(q, k=10)
    index.build_ann(nlist=50, nprobe=8)
    approx = index.search_embeddings(q, k=10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.indices, exact.indices)])
    assert recall >= 0.95, recall
    np.testing.assert_array_equal(index.search_embeddings(q, k=10, exact=True).indices,
                                  exact.indices)
    index.set_nprobe(1)
    low = index.search_embeddings(q, k=10)
    assert low.scores.shape == (100, 10)
    with pytest.raises(ValueError, match=r"nprobe must be in \[1, 50\]"):
        index.set_nprobe(51)
    index.drop_ann()
    with pytest.raises(ValueError, match="exact=False needs an ANN index"):
        index.search_embeddings(q, k=10, exact=False)
