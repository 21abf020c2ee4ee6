"""export.rest: the dev server's TF Serving REST API, checked against the examples and rules of
TF Serving's api_rest.md (and, where the document is silent, its json_tensor.cc /
http_rest_api_handler.cc), plus the CLIP search signatures and the page's static files."""

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import saved_model as sm
from export import serving_config as sc
from keras_clip.model import CLIP

from test_export_saved_model import _png  # noqa: E402
from test_search_signature import build_index  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """``python -m export.serve ... --rest-port 0`` in a subprocess; ``self.url`` is the REST
    root once its "serving on" line is printed."""

    def __init__(self, args, timeout=600):
        cmd = [sys.executable, "-m", "export.serve", "--port", "0", "--rest-port", "0",
               "--poll-seconds", "0.5", "--fast-load"] + list(args)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=ROOT)
        self.lines, self.ready = [], threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-30:]))
        line = next(ln for ln in self.lines if ln.startswith("REST API on "))
        self.url = "http://" + line.split()[-1]

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("serving on "):
                self.ready.set()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        time.sleep(0.2)
        return code


def http(url, body=None, method=None):
    """(status, headers, body bytes) of one request; ``body`` a str/bytes (sent as is) or an
    object (sent as JSON)."""
    if body is not None and not isinstance(body, (str, bytes)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    request = urllib.request.Request(url, data=body, method=method)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=120) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def call(url, body=None, method=None):
    status, headers, data = http(url, body, method)
    return status, json.loads(data)


class HalfPlusThree(tf.Module):
    """TF Serving's documentation example model: y = 0.5 x + 3."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x):
        return {"y": 0.5 * x + 3.0}


class Sensors(tf.Module):
    """Three named inputs as in api_rest.md's row / columnar example (tag, signal, sensor)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="tag"),
                                  tf.TensorSpec([None, 5], tf.float32, name="signal"),
                                  tf.TensorSpec([None, 2, 2], tf.int32, name="sensor")])
    def predict(self, tag, signal, sensor):
        return {"tag_bytes": tf.strings.join([tag, "!"]), "tag": tag,
                "signal_sum": tf.reduce_sum(signal, axis=1),
                "sensor_max": tf.reduce_max(sensor, axis=[1, 2])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="n"),
                                  tf.TensorSpec([None], tf.bool, name="flag")])
    def types(self, n, flag):
        return {"out": tf.where(flag, n, -n)}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest")
    half = HalfPlusThree()
    tf.saved_model.save(half, str(root / "saved_model_half_plus_three" / "123"),
                        signatures={"serving_default": half.predict})
    sensors = Sensors()
    tf.saved_model.save(sensors, str(root / "sensors" / "1"),
                        signatures={"serving_default": sensors.predict, "types": sensors.types})
    keras.utils.set_random_seed(0)
    model = CLIP.from_preset("ViT-Tiny")
    images = [_png(32, 32 + 3 * i, 200 + i) for i in range(5)]
    index, ids, names = build_index(model, images, str(root / "collection"))
    sm.export_clip(model, str(root / "clip"), index=index, warmup=False)
    config = sc.write_models_config(str(root / "models.config"), {
        "saved_model_half_plus_three": "/models/saved_model_half_plus_three",
        "sensors": "/models/sensors", "clip": "/models/clip"})
    server = Server(["--model-config", config, "--ui", "--index", index])
    yield dict(url=server.url, model=model, images=images, ids=ids, index=index, server=server,
               root=root)
    assert server.stop() == 0


# -- api_rest.md's own examples -------------------------------------------------------------
def test_status_as_documented(served):
    want = {"model_version_status": [{"version": "123", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}
    assert call(served["url"] + "/v1/models/saved_model_half_plus_three") == (200, want)
    assert call(served["url"] + "/v1/models/saved_model_half_plus_three/versions/123") == \
        (200, want)
    # Unknown versions and models: GetModelStatusImpl's messages.
    assert call(served["url"] + "/v1/models/saved_model_half_plus_three/versions/7") == \
        (404, {"error": "Could not find version 7 of model saved_model_half_plus_three"})
    assert call(served["url"] + "/v1/models/half") == \
        (404, {"error": "Could not find any versions of model half"})


def test_predict_as_documented(served):
    url = served["url"] + "/v1/models/saved_model_half_plus_three:predict"
    status, headers, data = http(url, '{"instances": [1.0,2.0,5.0]}')
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(data) == {"predictions": [3.5, 4.0, 5.5]}
    assert b"4.0" in data  # whole floats keep their ".0", as TF Serving writes them
    # Columnar: the single input unnamed, or named; the answer is "outputs".
    assert call(url, {"inputs": [1.0, 2.0, 5.0]}) == (200, {"outputs": [3.5, 4.0, 5.5]})
    assert call(url, {"inputs": {"x": [1.0, 2.0, 5.0]}}) == (200, {"outputs": [3.5, 4.0, 5.5]})
    assert call(served["url"] + "/v1/models/saved_model_half_plus_three/versions/123:predict",
                {"instances": [0.25]}) == (200, {"predictions": [3.125]})
    # Integers are numbers too for a float input; a scalar "inputs" is a 0-d tensor.
    assert call(url, {"inputs": [1, 2]}) == (200, {"outputs": [3.5, 4.0]})


def test_unknown_model_as_documented(served):
    status, headers, data = http(served["url"] + "/v1/models/half:predict",
                                 '{"instances": [1.0,5.0]}')
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert json.loads(data) == {"error": "Servable not found for request: Latest(half)"}
    assert call(served["url"] + "/v1/models/half/versions/3:predict", {"instances": [1.0]}) == \
        (404, {"error": "Servable not found for request: Specific(half, 3)"})
    assert call(served["url"] + "/v1/models/half/metadata") == \
        (404, {"error": "Servable not found for request: Latest(half)"})


def test_metadata(served):
    status, body = call(served["url"] + "/v1/models/saved_model_half_plus_three/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "saved_model_half_plus_three", "signature_name": "",
                                  "version": "123"}
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert sig["inputs"]["x"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert sig["outputs"]["y"]["dtype"] == "DT_FLOAT"


def test_row_and_columnar_formats_with_several_named_inputs(served):
    url = served["url"] + "/v1/models/sensors:predict"
    rows = {"instances": [{"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
                          {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]}]}
    columns = {"inputs": {"tag": ["foo", "bar"],
                          "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
                          "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]]}}
    b64 = [base64.b64encode(b"foo!").decode(), base64.b64encode(b"bar!").decode()]
    status, body = call(url, rows)
    assert status == 200
    # Several outputs: one object per instance; "_bytes" outputs are base64 objects.
    assert body == {"predictions": [
        {"tag_bytes": {"b64": b64[0]}, "tag": "foo", "signal_sum": 15.0, "sensor_max": 4},
        {"tag_bytes": {"b64": b64[1]}, "tag": "bar", "signal_sum": 15.0, "sensor_max": 8}]}
    assert call(url, columns) == (200, {"outputs": {
        "tag_bytes": [{"b64": b64[0]}, {"b64": b64[1]}], "tag": ["foo", "bar"],
        "signal_sum": [15.0, 15.0], "sensor_max": [4, 8]}})
    # Binary input values as {"b64": ...}.
    rows["instances"][0]["tag"] = {"b64": base64.b64encode(b"\xffoo").decode()}
    status, body = call(url, rows)
    assert status == 200
    assert base64.b64decode(body["predictions"][0]["tag_bytes"]["b64"]) == b"\xffoo!"
    # Columnar inputs need not share the 0-th dimension (this model's outputs are per input).
    status, body = call(url, {"inputs": {"tag": ["a"], "signal": [[1, 2, 3, 4, 5]] * 2,
                                         "sensor": [[[1, 2], [3, 4]]]}})
    assert status == 200 and body["outputs"]["signal_sum"] == [15.0, 15.0]
    assert body["outputs"]["tag"] == ["a"] and body["outputs"]["sensor_max"] == [4]


def test_int64_and_bool(served):
    url = served["url"] + "/v1/models/sensors:predict"
    assert call(url, {"signature_name": "types",
                      "instances": [{"n": 2 ** 40, "flag": True}, {"n": 3, "flag": False}]}) == \
        (200, {"predictions": [2 ** 40, -3]})
    status, body = call(url, {"signature_name": "types", "inputs": {"n": [1], "flag": [1]}})
    assert status == 400
    assert body["error"] == "JSON Value: 1 Type: Number is not of expected type: bool"


HALF = "/v1/models/saved_model_half_plus_three:predict"
SENSORS = "/v1/models/sensors:predict"
ROW = {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]}


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", HALF, '{"instances": [1.0,', 400, "JSON Parse error: "),
    ("POST", HALF, "", 400, "JSON Parse error: The document is empty"),
    ("POST", HALF, "[1, 2]", 400, "JSON Value: [1,2] Is not object"),
    ("POST", HALF, {"signature_name": 3, "instances": [1.0]}, 400,
     "'signature_name' key must be a string value."),
    ("POST", HALF, {"signature_name": "nope", "instances": [1.0]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", HALF, {"instances": [1.0], "inputs": [1.0]}, 400,
     "expecting only one of 'inputs' or 'instances' keys to exist"),
    ("POST", HALF, {"examples": [1.0]}, 400, "Missing 'inputs' or 'instances' key"),
    ("POST", HALF, {"instances": 1.0}, 400, "Expecting 'instances' to be an list/array"),
    ("POST", HALF, {"instances": []}, 400, "No values in 'instances' array"),
    ("POST", HALF, {"instances": ["a"]}, 400,
     'Failed to process element: 0 of \'instances\' list. Error: INVALID_ARGUMENT: JSON Value: '
     '"a" Type: String is not of expected type: float'),
    ("POST", HALF, {"instances": [[1.0], [2.0]]}, 400, "expected shape [-1], got [2, 1]"),
    ("POST", HALF, {"inputs": [[1.0, 2.0], [3.0]]}, 400,
     "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ("POST", HALF, {"inputs": [1.0, [2.0]]}, 400, "Encountered list at unexpected level: 1"),
    ("POST", HALF, {"inputs": []}, 400, "empty batch"),
    ("POST", SENSORS, {"instances": ["foo"]}, 400,
     "instances is a plain list, but expecting list of objects as multiple input tensors"),
    ("POST", SENSORS, {"instances": [dict(ROW, nope=1)]}, 400,
     "key: nope of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not have "
     "named input: nope"),
    ("POST", SENSORS, {"instances": [{"tag": "foo"}]}, 400,
     "keys must be equal to: sensor,signal,tag"),
    ("POST", SENSORS, {"instances": [ROW, dict(ROW, signal=[1, 2])]}, 400,
     "Expecting tensor size: 5 but got: 2"),
    ("POST", SENSORS, {"instances": [ROW, ["x"]]}, 400, "Expecting object but got list at item 1"),
    ("POST", SENSORS, {"inputs": ["foo"]}, 400,
     "inputs is a plain value/list, but expecting an object as multiple input tensors"),
    ("POST", SENSORS, {"inputs": {"tag": ["a"], "signal": [[1, 2, 3, 4, 5]]}}, 400,
     "Missing named input: sensor in 'inputs' object."),
    ("POST", SENSORS, {"inputs": {"tag": [{"b64": "!!"}], "signal": [[1, 2, 3, 4, 5]],
                                  "sensor": [[[1, 2], [3, 4]]]}}, 400, "Unable to base64 decode"),
    ("POST", SENSORS, {"inputs": {"tag": [{"b64": "YQ==", "x": 1}], "signal": [[1, 2, 3, 4, 5]],
                                  "sensor": [[[1, 2], [3, 4]]]}}, 400,
     "not formatted correctly for base64 data"),
    ("POST", SENSORS, {"inputs": {"tag": ["a"], "signal": [[1, 2, 3, 4, 5]],
                                  "sensor": [[[1.5, 2], [3, 4]]]}}, 400,
     "JSON Value: 1.5 Type: Number is not of expected type: int32"),
    ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("PUT", HALF, {"instances": [1.0]}, 400, "Malformed request: PUT "),
    ("POST", "/v1/models/saved_model_half_plus_three", {"instances": [1.0]}, 400,
     "Malformed request: POST"),
    ("POST", "/v1/models/saved_model_half_plus_three:regress", {"examples": [{"x": 1.0}]}, 501,
     "regress is not implemented"),
    ("POST", "/v1/models/saved_model_half_plus_three/labels/stable:predict",
     {"instances": [1.0]}, 501, "version labels are not supported"),
    ("POST", "/v1/models/saved_model_half_plus_three/versions/9:predict", {"instances": [1.0]},
     404, "Servable not found for request: Specific(saved_model_half_plus_three, 9)"),
    ("GET", "/v1/models/saved_model_half_plus_three/versions/9/metadata", None,
     404, "Servable not found for request: Specific(saved_model_half_plus_three, 9)"),
])
def test_errors_are_tf_serving_json_and_the_server_keeps_serving(served, method, path, body,
                                                                   status, message):
    got, headers, data = http(served["url"] + path, body, method=method)
    assert (got, headers["Content-Type"]) == (status, "application/json"), data
    error = json.loads(data)
    assert list(error) == ["error"] and message in error["error"], error
    assert call(served["url"] + HALF, {"instances": [1.0]}) == (200, {"predictions": [3.5]})


def test_columnar_ignores_names_the_signature_does_not_take(served):
    # As TF Serving does (FillTensorMapFromInputsMap reads only the signature's inputs).
    assert call(served["url"] + HALF, {"inputs": {"x": [1.0], "extra": "?"}}) == \
        (200, {"outputs": [3.5]})


def test_outside_v1_is_a_plain_404_without_ui(served):
    status, headers, _ = http(served["url"] + "/v2/models/x")
    assert status == 404 and headers["Content-Type"].startswith("text/plain")


# -- the CLIP search signatures over REST ------------------------------------------------------
def test_search_over_rest_row_and_columnar(served):
    loaded = tf.saved_model.load(os.path.join(served["root"], "clip", "1"))
    texts = ["a red circle", "a green square"]
    want = loaded.signatures["search"](texts=tf.constant(texts), k=tf.constant([3]))
    want_ids = want["ids"].numpy().astype(str).tolist()
    url = served["url"] + "/v1/models/clip:predict"
    status, body = call(url, {"signature_name": "search",
                              "instances": [{"texts": t, "k": 3} for t in texts]})
    assert status == 200
    assert [p["ids"] for p in body["predictions"]] == want_ids
    np.testing.assert_allclose([p["scores"] for p in body["predictions"]],
                               want["scores"].numpy(), atol=1e-6)
    status, body = call(url, {"signature_name": "search", "inputs": {"texts": texts, "k": [3]}})
    assert status == 200 and body["outputs"]["ids"] == want_ids
    # Query by example: an image of the collection finds itself first.
    b64 = base64.b64encode(served["images"][2]).decode()
    status, body = call(url, {"signature_name": "search_image",
                              "instances": [{"images": {"b64": b64}, "k": 1}]})
    assert status == 200 and body["predictions"][0]["ids"] == [served["ids"][2]]
    assert body["predictions"][0]["scores"][0] == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("k, message", [
    (0, "k must be between 1 and the collection size (5 images), got [0]"),
    (6, "k must be between 1 and the collection size (5 images), got [6]"),
    (2.0, "is not of expected type: int32"),
])
def test_search_bad_k_is_a_clear_400(served, k, message):
    status, body = call(served["url"] + "/v1/models/clip:predict",
                        {"signature_name": "search", "instances": [{"texts": "a", "k": k}]})
    assert status == 400 and message in body["error"], body


def test_search_image_refuses_non_images(served):
    status, body = call(served["url"] + "/v1/models/clip:predict",
                        {"signature_name": "search_image",
                         "inputs": {"images": ["not an image"], "k": [1]}})
    assert status == 400 and "not an encoded image" in body["error"]


# -- the page and the collection's images ------------------------------------------------------
def test_page_and_images_are_served(served):
    url = served["url"]
    status, headers, _ = http(url + "/")
    assert status == 302 and headers["Location"] == "/ui/"
    status, headers, page = http(url + "/ui/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="app.js"' in page
    status, headers, js = http(url + "/ui/app.js")
    assert status == 200 and b":predict" in js
    for i in (0, 4):
        status, headers, data = http(f"{url}/images/{served['ids'][i]}")
        assert (status, headers["Content-Type"], data) == (200, "image/png", served["images"][i])
    assert http(url + "/images/no-such-id")[0] == 404
    assert http(url + "/ui/../rest.py")[0] == 404
    assert http(url + "/ui/%2e%2e/rest.py")[0] == 404


def test_ui_and_index_need_the_rest_port(capsys, tmp_path):
    from export.serve import main

    for flags in (["--ui"], ["--index", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            main(["--model-config", str(tmp_path / "models.config")] + flags)
        assert exit_info.value.code == 2
        assert "--ui and --index need --rest-port" in capsys.readouterr().err


def test_a_bad_index_stops_the_server_before_it_serves(capsys, tmp_path):
    from export.serve import main

    config = sc.write_models_config(str(tmp_path / "models.config"), {"m": str(tmp_path / "m")})
    assert main(["--model-config", config, "--rest-port", "0", "--index",
                 str(tmp_path / "nowhere")]) == 2
    assert "embedding folder not found" in capsys.readouterr().err


def test_a_deeply_nested_body_is_a_bad_request():
    from export.grpc_server import PredictError
    from export.rest import parse_predict_body
    body = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(PredictError, match="nested too deeply"):
        parse_predict_body(body, {})
