"""export.serve over gRPC, driven only through TF Serving's official stubs (+ export.client)."""

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from export import saved_model as sm
from export import serving_config as sc
from export.client import CLIPClient
from keras_clip.model import CLIP
from keras_clip.preprocessing import preprocess_images
from keras_clip.text.tokenizer import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_MESSAGE_BYTES = 1_000_000  # small, so the oversized-message test stays cheap


from test_export_saved_model import _normalize, _png  # noqa: E402  (shared test helpers)


class Server:
    """``python -m export.serve`` in a subprocess; waits for its "serving on" line."""

    def __init__(self, config, timeout=300):
        cmd = [sys.executable, "-m", "export.serve", "--model-config", config, "--port", "0",
               "--poll-seconds", "0.5", "--max-message-bytes", str(MAX_MESSAGE_BYTES),
               "--fast-load"]  # a busy CPU: skip Grappler's slow first-call optimisation
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=ROOT)
        self.lines, self.ready = [], threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-30:]))
        line = next(ln for ln in self.lines if ln.startswith("serving on "))
        self.address = line.split()[-1]
        assert self.address.startswith("127.0.0.1:")  # loopback unless told otherwise

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("serving on "):
                self.ready.set()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        time.sleep(0.2)  # let the reader thread take the last lines
        return code


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset("ViT-Tiny")
    root = tmp_path_factory.mktemp("serving")
    sm.export_clip(model, str(root / "clip"))
    # The docker layout: base path /models/clip, mapped onto the config's directory.
    config = sc.write_models_config(str(root / "models.config"), {"clip": "/models/clip"})
    server = Server(config)
    channel = grpc.insecure_channel(server.address)
    yield dict(model=model, root=root, server=server, channel=channel,
               predict=prediction_service_pb2_grpc.PredictionServiceStub(channel),
               models=model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()
    assert server.stop() == 0
    assert any("stopped" in ln for ln in server.lines), "".join(server.lines[-10:])


def _request(signature, inputs, name="clip", version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if signature is not None:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def _texts(*texts):
    return np.array([t.encode() for t in texts], dtype=object)


def _embed_text(served, texts, version=None):
    response = served["predict"].Predict(_request("encode_text", {"texts": _texts(*texts)},
                                                  version=version), timeout=60)
    return tf.make_ndarray(response.outputs["embeddings"]), response


def test_predict_each_signature(served):
    model = served["model"]
    texts = ["a red circle", "two blue squares"]
    got, response = _embed_text(served, texts)
    assert response.model_spec.version.value == 1
    np.testing.assert_allclose(got, _normalize(model.encode_text(tokenize(texts))), atol=1e-5)
    default = served["predict"].Predict(_request(None, {"texts": _texts(*texts)}), timeout=60)
    assert default.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(tf.make_ndarray(default.outputs["embeddings"]), got, atol=1e-6)

    images = [_png(40, 50, 1), _png(32, 32, 2)]
    response = served["predict"].Predict(
        _request("encode_image", {"images": np.array(images, dtype=object)}), timeout=60)
    want = _normalize(model.encode_image(preprocess_images(images, image_size=model.image_size)))
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["embeddings"]), want, atol=1e-5)

    labels = np.array([[b"cat", b"dog"], [b"dog", b"cat"]], dtype=object)
    same = np.array([images[0], images[0]], dtype=object)
    request = _request("zero_shot", {"images": same, "labels": labels})
    response = served["predict"].Predict(request, timeout=60)
    assert set(response.outputs) == {"probabilities", "label_index", "label"}
    probs = tf.make_ndarray(response.outputs["probabilities"])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs[0], probs[1][::-1], atol=1e-5)  # same labels, swapped
    request.output_filter.append("label")
    filtered = served["predict"].Predict(request, timeout=60)
    assert set(filtered.outputs) == {"label"}


def test_client_wrapper(served):
    with CLIPClient(served["server"].address, "clip") as client:
        emb = client.encode_text(["a red circle"])
        np.testing.assert_allclose(emb, _normalize(served["model"].encode_text(
            tokenize(["a red circle"]))), atol=1e-5)
        assert client.encode_image([_png(32, 32, 3)]).shape == (1, 32)
        out = client.zero_shot([_png(32, 32, 3)], ["cat", "dog", "bird"])
        assert out["probabilities"].shape == (1, 3) and out["label"][0] in ("cat", "dog", "bird")
        assert client.status() == [{"version": 1, "state": "AVAILABLE"}]
        assert client.metadata()["zero_shot"]["inputs"]["labels"] == ("DT_STRING", [-1, -1])


def test_metadata_and_status(served):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "clip"
    response = served["predict"].GetModelMetadata(request, timeout=60)
    assert response.model_spec.version.value == 1
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    sigs = sigs.signature_def
    assert {"serving_default", "encode_text", "encode_image", "zero_shot"} <= set(sigs)
    assert set(sigs["encode_text"].inputs) == {"texts"}
    assert set(sigs["encode_image"].inputs) == {"images"}
    assert set(sigs["zero_shot"].inputs) == {"images", "labels"}
    assert set(sigs["zero_shot"].outputs) == {"probabilities", "label_index", "label"}
    assert set(sigs["serving_default"].outputs) == {"embeddings"}

    status = served["models"].GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "clip"}), timeout=60)
    assert [(s.version, s.state) for s in status.model_version_status] == \
        [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def _expect_error(call, code, *fragments):
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details(), info.value.details()


@pytest.mark.parametrize("case", ["model", "version", "signature", "input_name", "dtype", "shape",
                                  "not_image", "short_image", "empty", "oversized",
                                  "status_model"])
def test_malformed_requests(served, case):
    predict, texts = served["predict"].Predict, {"texts": _texts("a cat")}
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    if case == "model":
        _expect_error(lambda: predict(_request("encode_text", texts, name="nope")), not_found,
                      "model 'nope' not found")
    elif case == "version":
        _expect_error(lambda: predict(_request("encode_text", texts, version=7)), not_found,
                      "version 7 not found")
    elif case == "signature":
        _expect_error(lambda: predict(_request("encode_txt", texts)), invalid,
                      "unknown signature_name 'encode_txt'", "encode_text")
    elif case == "input_name":
        _expect_error(lambda: predict(_request("encode_text", {"text": _texts("a")})), invalid,
                      "unknown input(s) ['text']", "missing input(s) ['texts']")
    elif case == "dtype":
        _expect_error(lambda: predict(_request("encode_text", {"texts": np.zeros(2, np.float32)})),
                      invalid, "input 'texts': expected dtype string, got float32")
    elif case == "shape":
        rank2 = np.array([[b"a", b"b"]], dtype=object)
        _expect_error(lambda: predict(_request("encode_text", {"texts": rank2})), invalid,
                      "input 'texts': expected shape [-1], got [1, 2]")
    elif case == "not_image":
        images = np.array([_png(32, 32, 0), b"GIF? no, plain text"], dtype=object)
        _expect_error(lambda: predict(_request("encode_image", {"images": images})), invalid,
                      "not an encoded image", "[1]")
    elif case == "short_image":  # was "pos 8 out of range for string b'hello'"
        images = np.array([_png(32, 32, 0), b"hello", b""], dtype=object)
        _expect_error(lambda: predict(_request("encode_image", {"images": images})), invalid,
                      "not an encoded image", "[1 2]")
    elif case == "empty":
        _expect_error(lambda: predict(_request("encode_text", {"texts": np.array([], object)})),
                      invalid, "empty batch")
    elif case == "oversized":
        big = np.array([b"\x89PNG\r\n\x1a\n" + bytes(MAX_MESSAGE_BYTES)], dtype=object)
        _expect_error(lambda: predict(_request("encode_image", {"images": big})),
                      grpc.StatusCode.RESOURCE_EXHAUSTED)
    else:
        _expect_error(lambda: served["models"].GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "nope"})), not_found,
            "model 'nope' not found")
    # The server keeps serving after every error.
    assert _embed_text(served, ["still fine"])[0].shape == (1, 32)


def test_version_policy_and_paths(tmp_path):
    from export.serve import ModelRegistry

    for v in (1, 2, 5):
        os.makedirs(tmp_path / "clip" / str(v))
        (tmp_path / "clip" / str(v) / "saved_model.pb").touch()
    os.makedirs(tmp_path / "clip" / "7")  # incomplete copy: no saved_model.pb
    os.makedirs(tmp_path / "clip" / ".tmp-8-x")
    for policy, versions, want in (("latest", None, [5]), ("all", None, [1, 2, 5]),
                                   ("specific", [2, 7], [2])):
        config = sc.write_models_config(str(tmp_path / "models.config"), {"clip": "/models/clip"},
                                        policy, versions)
        registry = ModelRegistry(config)  # reads the config; loads nothing until start()
        model = registry.models["clip"]
        assert model.base_path == str(tmp_path / "clip")
        assert model.wanted() == want, policy


def test_cli_defaults_loopback_64_mb_messages_poll_every_second(monkeypatch):
    """README: bound to 127.0.0.1 by default, 64 MB messages, versions polled every second."""
    from export import serve

    seen = {}

    class Registry:
        def __init__(self, config, container_root, poll_seconds, log):
            seen["poll_seconds"] = poll_seconds

        def start(self):
            pass

    class Stop(Exception):
        pass

    def make_server(registry, host, port, max_message_bytes, workers):
        seen.update(host=host, port=port, max_message_bytes=max_message_bytes)
        raise Stop

    monkeypatch.setattr(serve, "ModelRegistry", Registry)
    monkeypatch.setattr(serve, "make_server", make_server)
    with pytest.raises(Stop):
        serve.main(["--model-config", "models.config"])
    assert seen == dict(poll_seconds=1.0, host="127.0.0.1", port=8500,
                        max_message_bytes=64 * 1024 * 1024)


@pytest.mark.slow
def test_load_16_clients_x_100_requests(served):
    latencies, errors = [], []
    lock = threading.Lock()

    def client(k):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(served["channel"])
        for i in range(100):
            if i % 4 == 3:
                signature, inputs = "encode_image", {"images": np.array([_png(32, 32, i)], object)}
            else:
                signature, inputs = "encode_text", {"texts": _texts(f"a {k} {i}")}
            t0 = time.perf_counter()
            try:
                stub.Predict(_request(signature, inputs), timeout=120)
                with lock:
                    latencies.append(time.perf_counter() - t0)
            except grpc.RpcError as e:
                with lock:
                    errors.append(f"{e.code()}: {e.details()}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    print(f"\nload: 16 clients x 100 requests (3/4 text, 1/4 image): {len(ms)} ok, "
          f"{len(errors)} errors, p50 {np.percentile(ms, 50):.1f} ms, "
          f"p99 {np.percentile(ms, 99):.1f} ms, {len(ms) / wall:.0f} req/s")
    assert not errors, errors[:5]
    assert len(latencies) == 1600


@pytest.mark.slow
def test_hot_swap_to_version_2_without_failed_requests(served):
    # Runs last in this module: version 2 replaces version 1 for good.
    keras.utils.set_random_seed(1)
    model2 = CLIP.from_preset("ViT-Tiny")
    versions, errors, stop = set(), [], threading.Event()

    def client():
        stub = prediction_service_pb2_grpc.PredictionServiceStub(served["channel"])
        while not stop.is_set():
            try:
                r = stub.Predict(_request("encode_text", {"texts": _texts("a red circle")}),
                                 timeout=120)
                versions.add(r.model_spec.version.value)
            except grpc.RpcError as e:
                errors.append(f"{e.code()}: {e.details()}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        sm.export_clip(model2, str(served["root"] / "clip"))  # version 2, while clients run
        request = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "clip"})
        deadline = time.time() + 300
        while time.time() < deadline:
            status = served["models"].GetModelStatus(request, timeout=60)
            if [s.version for s in status.model_version_status] == [2]:
                break
            time.sleep(0.5)
        time.sleep(2)  # keep the clients going on version 2 for a while
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert versions == {1, 2}
    assert [(s.version, s.state) for s in status.model_version_status] == \
        [(2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    got, response = _embed_text(served, ["a red circle"])
    assert response.model_spec.version.value == 2
    np.testing.assert_allclose(got, _normalize(model2.encode_text(tokenize(["a red circle"]))),
                               atol=1e-5)
    _expect_error(lambda: _embed_text(served, ["x"], version=1), grpc.StatusCode.NOT_FOUND,
                  "version 1 not found")


@pytest.mark.slow
def test_demo_serve_on_tiny_models(tmp_path):
    from keras_dalle.vae.presets import dvae_from_preset

    keras.utils.set_random_seed(0)
    CLIP.from_preset("ViT-Tiny").save(str(tmp_path / "clip.keras"))
    dvae_from_preset("dvae-tiny").save(str(tmp_path / "dvae.keras"))
    out = tmp_path / "serving"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "export.demo_serve", "--clip", str(tmp_path / "clip.keras"),
         "--dvae", str(tmp_path / "dvae.keras"), "--out", str(out), "--num-images", "4",
         "--fast-load"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in ("serving on 127.0.0.1:", "retrieval: 4 captions", "zero-shot: 4 images",
                 "dVAE decode: 8x8 tokens → 16x16 PNG", "server | stopped", "server exit code 0"):
        assert line in result.stdout, line
    config = sc.read_models_config(str(out / "models.config"))
    assert [c.name for c in config.model_config_list.config] == ["clip", "dvae"]
    assert os.path.exists(out / "clip" / "1" / "saved_model.pb")
    assert os.path.exists(out / "batching_parameters.txt")
