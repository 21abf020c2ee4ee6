"""The embedding job on Apache Beam (keras_clip.beam): DirectRunner in multi-process mode gives
the same folder as the local job (embeddings, metadata, skipped list, manifest).

Needs the [beam] extra (apache-beam 2.77); skipped without it. apache-beam pins
protobuf < 7 and pillow < 13, so it lives in its own venv next to this one:
``PYTHONPATH=. /work/beamvenv/bin/python -m pytest -q -m slow tests/test_beam.py``.
"""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("apache_beam")

import keras_clip  # noqa: E402,F401

from keras_clip.beam import main, run_beam_embedding  # noqa: E402
from keras_clip.embed import embed_images  # noqa: E402
from keras_clip.index import ImageIndex  # noqa: E402
from keras_clip.model import CLIP  # noqa: E402
from keras_clip.saving import save_model_atomic  # noqa: E402

from test_embed import make_folder  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # two worker processes each start TensorFlow: ~60-90 s on 2 cores
def test_beam_multiprocess_equals_local(tmp_path, monkeypatch):
    # The workers are new Python processes: they must find keras_clip.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    model_path = save_model_atomic(CLIP.from_preset("ViT-Tiny"), str(tmp_path / "m.keras"))
    images = str(tmp_path / "images")
    os.makedirs(images)
    make_folder(images, n=19, seed=5)
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    expected = embed_images(model_path, images, local, batch_size=4, shard_size=8,
                            progress=False)
    got = run_beam_embedding(model_path, images, beam, runner="DirectRunner",
                             beam_args=["--direct_num_workers=2",
                                        "--direct_running_mode=multi_processing"],
                             batch_size=4, shard_size=8)
    assert got == expected  # manifest: counts, skipped list, shards, model, preprocessing
    assert expected["skipped_count"] == 1 and len(expected["shards"]) == 3
    assert not os.path.exists(os.path.join(tmp_path, ".beam.partial"))
    for shard in expected["shards"]:
        a = np.load(os.path.join(local, shard["embeddings"]))
        b = np.load(os.path.join(beam, shard["embeddings"]))
        assert a.dtype == b.dtype == np.float16 and a.shape == b.shape
        np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), atol=1e-3)
        assert (pq.read_table(os.path.join(local, shard["metadata"])).to_pylist()
                == pq.read_table(os.path.join(beam, shard["metadata"])).to_pylist())
    a, b = ImageIndex.load(local), ImageIndex.load(beam)
    assert a.ids == b.ids and a.paths == b.paths and a.captions == b.captions
    # The CLI's --runner refuses a second job into the same folder before starting Beam.
    assert main(["--model", model_path, "--data", images, "--out", beam,
                 "--runner", "DirectRunner"]) == 1
