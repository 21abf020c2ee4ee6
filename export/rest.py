"""TF Serving's REST API for the dev server (``python -m export.serve --rest-port 8501``).

Speaks the API of ``tensorflow_model_server --rest_api_port`` (TF Serving's ``api_rest.md``;
the exact answers follow its source: ``model_servers/http_rest_api_handler.cc``,
``http_rest_api_util.cc``, ``http_server.cc`` and ``util/json_tensor.cc``), on the same
:class:`export.grpc_server.ModelRegistry` and :func:`export.grpc_server.run_predict` as the gRPC server:

* ``GET /v1/models/NAME[/versions/N]`` → ``{"model_version_status": [{"version": "1", "state":
  "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}``
* ``GET /v1/models/NAME[/versions/N]/metadata`` → ``{"model_spec": {...}, "metadata":
  {"signature_def": {...}}}`` (the SignatureDefMap as proto3 JSON, proto field names)
* ``POST /v1/models/NAME[/versions/N]:predict`` with ``{"signature_name": s, "instances": [...]}``
  (row format: one item per batch element, an object per item when the signature has several
  inputs; answer ``{"predictions": [...]}``, an object per item when there are several outputs)
  or ``{"signature_name": s, "inputs": value | {name: value}}`` (columnar; answer ``{"outputs":
  value | {name: value}}``). Binary strings are ``{"b64": "..."}``; outputs whose name ends in
  ``_bytes`` are answered that way. Floats are written with the shortest repr of their dtype
  (``NaN``, ``Infinity``, ``-Infinity`` as TF Serving writes them).
* Errors: ``{"error": "message"}`` with TF Serving's status mapping: INVALID_ARGUMENT /
  FAILED_PRECONDITION / OUT_OF_RANGE → 400, NOT_FOUND → 404, UNIMPLEMENTED (``:classify``,
  ``:regress``, version labels, dtypes without a JSON mapping) → 501, anything unexpected → 500.
  The server keeps serving after every error.
* As in TF Serving, a columnar ``inputs`` object may carry keys the signature does not take
  (they are ignored); in the row format an unknown name is an error.

With ``ui_dir`` the server also serves a static page under ``/ui/`` (``/`` redirects there) and,
with a :class:`export.search_signature.Collection`, the collection's image files under
``/images/<id>`` — paths outside ``/v1/`` that TF Serving does not use.

Example:
    >>> server, port = make_rest_server(registry, port=8501)
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    $ curl -d '{"instances": ["a red circle"]}' localhost:8501/v1/models/clip:predict
"""

import base64
import binascii
import json
import math
import mimetypes
import os
import re
import threading
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     predict_pb2)

from export.grpc_server import ModelServicer, PredictError, PredictionServicer, run_predict

# The request paths of TF Serving's http_rest_api_util.cc (RE2, case-insensitive).
_API_PATH = re.compile(r"/v1/.*", re.I | re.S)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.I)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.I)

# http_server.cc ToHTTPStatusCode.
_HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}
WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")  # the search page
_MAX_DEBUG_CHARS = 256  # json_tensor.cc kMaxJsonDebugStringBytes
_INT_RANGES = {tf.int8: (-2**31, 2**31 - 1), tf.int16: (-2**31, 2**31 - 1),
               tf.int32: (-2**31, 2**31 - 1), tf.uint8: (-2**31, 2**31 - 1),
               tf.int64: (-2**63, 2**63 - 1), tf.uint32: (0, 2**32 - 1),
               tf.uint64: (0, 2**64 - 1)}


def _invalid(*parts):
    return PredictError(grpc.StatusCode.INVALID_ARGUMENT, "".join(str(p) for p in parts))


def _debug(value):
    """A JSON value as TF Serving quotes it in error messages (truncated at 256 chars)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text[:_MAX_DEBUG_CHARS]


def _json_type(value):
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return "Number"
    return {str: "String", list: "Array", dict: "Object"}[type(value)]


def _dtype_name(dtype):
    """TF's DataTypeString (``float`` for float32, ``double`` for float64)."""
    return {tf.float32: "float", tf.float64: "double"}.get(dtype, dtype.name)


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _scalar(value, dtype):
    """One JSON leaf → a Python value of ``dtype`` (json_tensor.cc AddValueToTensor)."""
    if isinstance(value, dict):
        if dtype != tf.string:
            raise _type_error(value, dtype)
        if not _is_b64(value):
            raise _invalid("JSON Value: ", _debug(value),
                           " not formatted correctly for base64 data")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise _invalid("Unable to base64 decode") from None
    if dtype in (tf.float32, tf.float64, tf.float16, tf.bfloat16):
        if dtype in (tf.float16, tf.bfloat16):
            raise PredictError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Conversion of JSON Value: {_debug(value)} to type: "
                               f"{_dtype_name(dtype)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)
        return float(value)
    if dtype == tf.string:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", "surrogatepass")
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    raise PredictError(grpc.StatusCode.UNIMPLEMENTED,
                       f"Conversion of JSON Value: {_debug(value)} to type: {_dtype_name(dtype)}")


def _type_error(value, dtype):
    return _invalid("JSON Value: ", _debug(value), " Type: ", _json_type(value),
                    " is not of expected type: ", _dtype_name(dtype))


def _dense_shape(value):
    """json_tensor.cc GetDenseTensorShape: the sizes along the first elements."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level, shape, dtype, out):
    """json_tensor.cc FillTensorProto: leaves at depth len(shape), lists of the right size."""
    if not isinstance(value, list):
        if level != len(shape):
            raise _invalid("JSON Value: ", _debug(value), " found at incorrect level: ",
                           level + 1, " in the JSON DOM. Expected at level: ", len(shape))
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise _invalid("Encountered list at unexpected level: ", level, " expected < ",
                       len(shape))
    if len(value) != shape[level]:
        raise _invalid("Encountered list at unexpected size: ", len(value), " at level: ",
                       level, " expected size: ", shape[level])
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _tensor(value, dtype):
    """A JSON value → (flat list of values, shape)."""
    shape = _dense_shape(value)
    flat = []
    _fill(value, 0, shape, dtype, flat)
    return flat, shape


def _status_string(error):
    """absl::Status::ToString of an INVALID_ARGUMENT error (nested into row-format errors)."""
    return f"INVALID_ARGUMENT: {error}"


def _rows_to_tensors(instances, inputs):
    """json_tensor.cc FillTensorMapFromInstancesList: ``inputs`` {name: dtype}."""
    first = instances[0]
    if not isinstance(first, dict) and len(inputs) > 1:
        raise _invalid("instances is a plain list, but expecting list of objects as multiple "
                       "input tensors required as per tensorinfo_map")

    def is_object(v):
        return isinstance(v, dict) and not _is_b64(v)

    objects = is_object(first)
    names = sorted(inputs)
    values = {name: [] for name in names}
    shapes = {}

    def add(item, name, index, key_text):
        if name not in inputs:
            error = _invalid("JSON object: does not have named input: ", name)
        else:
            try:
                flat, shape = _tensor(item, inputs[name])
                if name not in shapes:
                    shapes[name] = (len(flat), shape)
                elif shapes[name][0] != len(flat):
                    raise _invalid("Expecting tensor size: ", shapes[name][0], " but got: ",
                                   len(flat))
                elif shapes[name][1] != shape:
                    raise _invalid("Expecting shape ", _shape_text(shapes[name][1]),
                                   " but got: ", _shape_text(shape))
                values[name].extend(flat)
                return
            except PredictError as e:
                if e.code != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                error = e
        raise _invalid("Failed to process element: ", index, key_text,
                       " of 'instances' list. Error: ", _status_string(error))

    for index, item in enumerate(instances):
        if objects:
            if not is_object(item):
                raise _invalid("Expecting object but got list at item ", index,
                               " of input list")
            for name, value in item.items():
                add(value, name, index, f" key: {name}")
            if set(item) != set(names):
                raise _invalid("Failed to process element: ", index,
                               " of 'instances' list. JSON object: ", _debug(item),
                               " keys must be equal to: ", ",".join(names))
        else:
            if is_object(item):
                raise _invalid("Expecting value/list but got object at item ", index,
                               " of input list")
            add(item, names[0], index, "")
    return {name: _array(values[name], [len(instances)] + shapes[name][1], inputs[name])
            for name in names}


def _columns_to_tensors(value, inputs):
    """json_tensor.cc FillTensorMapFromInputsMap."""
    if not isinstance(value, dict) or _is_b64(value):
        if len(inputs) > 1:
            raise _invalid("inputs is a plain value/list, but expecting an object as multiple "
                           "input tensors required as per tensorinfo_map")
        name = next(iter(inputs))
        flat, shape = _tensor(value, inputs[name])
        return {name: _array(flat, shape, inputs[name])}
    out = {}
    for name in sorted(inputs):
        if name not in value:
            raise _invalid("Missing named input: ", name, " in 'inputs' object.")
        flat, shape = _tensor(value[name], inputs[name])
        out[name] = _array(flat, shape, inputs[name])
    return out


def _shape_text(shape):
    return "[" + ",".join(str(d) for d in shape) + "]"


def _array(flat, shape, dtype):
    if dtype == tf.string:
        array = np.empty(len(flat), object)
        array[:] = flat
    else:
        array = np.array(flat, dtype.as_numpy_dtype)
    return array.reshape(shape)


def parse_predict_body(body, signature_inputs):
    """TF Serving's FillPredictRequestFromJson.

    Args:
        body: the request body (bytes).
        signature_inputs: callable ``signature_name -> {input name: tf.DType}``; it raises
            PredictError for an unknown signature.

    Returns:
        ``(signature_name, {name: numpy array}, format)`` with format "row" or "columnar".

    Raises:
        PredictError: INVALID_ARGUMENT with TF Serving's message (or UNIMPLEMENTED for a dtype
            without a JSON mapping).
    """
    if not body:
        raise _invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
        doc = json.loads(text)
    except UnicodeDecodeError as e:
        raise _invalid("JSON Parse error: Invalid encoding in string. at offset: ",
                       e.start) from None
    except json.JSONDecodeError as e:
        raise _invalid("JSON Parse error: ", e.msg, " at offset: ", e.pos) from None
    except RecursionError:  # a pathologically nested document: a bad request, not a crash
        raise _invalid("JSON Parse error: The document is nested too deeply") from None
    if not isinstance(doc, dict):
        raise _invalid("JSON Value: ", _debug(doc), " Is not object")
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise _invalid("JSON Value: ", _debug(doc), " not formatted correctly. "
                       "'signature_name' key must be a string value.")
    inputs = signature_inputs(signature)
    if not inputs:
        raise _invalid("Failed to get input map for signature: ", signature or "DEFAULT")
    if "instances" in doc:
        if "inputs" in doc:
            raise _invalid("JSON Value: ", _debug(doc), " Not formatted correctly expecting "
                           "only one of 'inputs' or 'instances' keys to exist ")
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _invalid("JSON Value: ", _debug(doc), " Expecting 'instances' to be an "
                           "list/array")
        if not instances:
            raise _invalid("JSON Value: ", _debug(doc), " No values in 'instances' array")
        return signature, _rows_to_tensors(instances, inputs), "row"
    if "inputs" in doc:
        return signature, _columns_to_tensors(doc["inputs"], inputs), "columnar"
    raise _invalid("Missing 'inputs' or 'instances' key")


class _Raw(str):
    """A JSON number written verbatim (floats in their dtype's shortest form)."""


def _json_value(value, as_bytes):
    if isinstance(value, (bytes, np.bytes_)):
        if as_bytes:
            return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (np.floating, float)):
        if math.isnan(value):
            return _Raw("NaN")
        if math.isinf(value):
            return _Raw("-Infinity" if value < 0 else "Infinity")
        text = repr(float(value)) if isinstance(value, (float, np.float64)) else str(value)
        if "." not in text and "e" not in text:
            text += ".0"
        return _Raw(text)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"Failed to write JSON value for tensor type: {type(value).__name__}")


def _nested(array, as_bytes):
    if not isinstance(array, np.ndarray):  # one element of a 1-D array
        return _json_value(array, as_bytes)
    if array.ndim == 0:
        return _json_value(array[()], as_bytes)
    return [_nested(a, as_bytes) for a in array] if array.ndim > 1 else \
        [_json_value(v, as_bytes) for v in array]


def dumps(obj):
    """JSON text of ``obj`` where :class:`_Raw` values are written verbatim."""
    if isinstance(obj, _Raw):
        return str(obj)
    if isinstance(obj, dict):
        return "{" + ", ".join(json.dumps(k) + ": " + dumps(v) for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    return json.dumps(obj, ensure_ascii=False)


def predict_response(outputs, fmt):
    """TF Serving's MakeJsonFromTensors: ``{"predictions": ...}`` (row) or ``{"outputs": ...}``
    (columnar) of ``{name: numpy array}``."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    as_bytes = {n: n.endswith("_bytes") and outputs[n].dtype == object for n in names}
    if fmt == "columnar":
        if len(names) == 1:
            return {"outputs": _nested(outputs[names[0]], as_bytes[names[0]])}
        return {"outputs": {n: _nested(outputs[n], as_bytes[n]) for n in names}}
    batch = None
    for n in names:
        if outputs[n].ndim == 0:
            raise _invalid("Tensor name: ", n, " has no shape information ")
        if batch is not None and outputs[n].shape[0] != batch:
            raise _invalid("Tensor name: ", n, " has inconsistent batch size: ",
                           outputs[n].shape[0], " expecting: ", batch)
        batch = outputs[n].shape[0]
    rows = []
    for i in range(batch):
        items = {n: _nested(outputs[n][i], as_bytes[n]) for n in names}
        rows.append(items if len(names) > 1 else items[names[0]])
    return {"predictions": rows}


class _Context:
    """The part of a grpc.ServicerContext the servicers use: abort raises PredictError."""

    def abort(self, code, message):
        raise PredictError(code, message)


class RestApi:
    """TF Serving's REST API over a ModelRegistry; :meth:`handle` is the whole protocol.

    Args:
        registry: an :class:`export.grpc_server.ModelRegistry`.
        ui_dir: a directory of static files served under ``/ui/`` (None: no page).
        collection: an :class:`export.search_signature.Collection` whose image files are
            served under ``/images/<id>`` (None: none).
    """

    def __init__(self, registry, ui_dir=None, collection=None):
        self.registry = registry
        self.ui_dir = os.path.abspath(ui_dir) if ui_dir else None
        self.collection = collection
        self._rows = {} if collection is None else {i: r for r, i in enumerate(collection.ids)}
        self._status = ModelServicer(registry)
        self._metadata = PredictionServicer(registry)

    def handle(self, method, path, body):
        """One request → ``(http status, content type, body bytes)``."""
        path = urllib.parse.urlsplit(path).path
        if not _API_PATH.fullmatch(path):
            return self._static(method, path)
        try:
            payload = self._api(method, path, body)
            return 200, "application/json", (dumps(payload) + "\n").encode()
        except Exception as e:
            if isinstance(getattr(e, "code", None), grpc.StatusCode):
                # A PredictError (also export.serve's when it runs as __main__: another class).
                status, message = _HTTP_STATUS.get(e.code, 500), str(e)
            else:  # a bug must not stop the server
                traceback.print_exc()
                status, message = 500, f"{type(e).__name__}: {e}"
        return status, "application/json", (json.dumps({"error": message}) + "\n").encode()

    def _api(self, method, path, body):
        malformed = _invalid(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, verb = match.groups()
            spec = self._spec(name, version, label)
            if verb.lower() != "predict":
                raise PredictError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"{verb} is not implemented by this dev server (only "
                                   "predict; the CLIP signatures are not classify/regress)")
            return self._predict(spec, body)
        if method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, metadata = match.groups()
            if not name:
                raise _invalid("Missing model name in request.")
            spec = self._spec(name, version, label, status=not metadata)
            if metadata:
                return self._model_metadata(spec)
            response = self._status.GetModelStatus(
                get_model_status_pb2.GetModelStatusRequest(model_spec=spec), _Context())
            return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
        raise malformed

    def _spec(self, name, version, label, status=False):
        """The ModelSpec of a request path; NOT_FOUND with TF Serving's messages (those of
        GetModelStatusImpl for a status request, else ServerCore's "Servable not found")."""
        name = urllib.parse.unquote(name)
        spec = predict_pb2.PredictRequest().model_spec
        spec.name = name
        if version is not None and label is not None:
            raise _invalid(f"Both model version ({version}) and model version label "
                           f"({label}) cannot be supplied.")
        if version is not None:
            try:
                spec.version.value = int(version)
            except ValueError:
                raise _invalid(f"Failed to convert version: {version} to numeric.") from None
        if label is not None:
            raise PredictError(grpc.StatusCode.UNIMPLEMENTED,
                               "version labels are not supported by this dev server; use "
                               "/versions/N")
        model = self.registry.models.get(name)
        known = {} if model is None else dict(model.versions)
        if status:
            if model is not None and model.loading is not None:
                known[model.loading] = None
            if version is not None and spec.version.value not in known:
                raise PredictError(grpc.StatusCode.NOT_FOUND, f"Could not find version "
                                   f"{spec.version.value} of model {name}")
            if not known:
                raise PredictError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
        elif (spec.version.value not in known) if version is not None else not known:
            request = (f"Specific({name}, {spec.version.value})" if version is not None
                       else f"Latest({name})")
            raise PredictError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {request}")
        return spec

    def _predict(self, spec, body):
        version = self.registry.get(spec)

        def signature_inputs(signature):
            name = signature or "serving_default"
            if name not in version.signature_defs:
                raise _invalid(f'Serving signature name: "{name}" not found in signature def')
            return {k: tf.dtypes.as_dtype(v.dtype)
                    for k, v in version.signature_defs[name].inputs.items()}

        signature, arrays, fmt = parse_predict_body(body, signature_inputs)
        dtypes = signature_inputs(signature)
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(spec)
        request.model_spec.signature_name = signature
        for key, array in arrays.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(array, dtype=dtypes[key]))
        return predict_response(run_predict(version, request), fmt)

    def _model_metadata(self, spec):
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec,
                                                                 metadata_field=["signature_def"])
        response = self._metadata.GetModelMetadata(request, _Context())
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        opts = dict(always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
        return {"model_spec": json_format.MessageToDict(response.model_spec, **opts),
                "metadata": {"signature_def": json_format.MessageToDict(sig_map, **opts)}}

    # -- the page and the collection's images (outside /v1/, which TF Serving owns) ------------
    def _static(self, method, path):
        if method != "GET" or self.ui_dir is None:
            return _not_found(path)
        if path in ("/", "/ui"):
            return 302, "/ui/", b""
        if path.startswith("/ui/"):
            name = path[len("/ui/"):] or "index.html"
            file = os.path.abspath(os.path.join(self.ui_dir, name))
            if os.path.dirname(file) != self.ui_dir or not os.path.isfile(file):
                return _not_found(path)
            with open(file, "rb") as f:
                return 200, _content_type(file), f.read()
        if path.startswith("/images/") and self.collection is not None:
            row = self._rows.get(urllib.parse.unquote(path[len("/images/"):]))
            file = None if row is None else self.collection.image_file(row)
            if file is None or not os.path.isfile(file):
                return _not_found(path)
            with open(file, "rb") as f:
                return 200, _content_type(file), f.read()
        return _not_found(path)


def _content_type(path):
    kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return kind + ("; charset=utf-8" if kind.startswith("text/") or kind.endswith("javascript")
                   else "")


def _not_found(path):
    return 404, "text/plain; charset=utf-8", f"not found: {path}\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api = None  # set per server class

    def _serve(self, method):
        length = self.headers.get("Content-Length")
        try:
            body = self.rfile.read(int(length)) if length else b""
        except ValueError:
            self.send_error(400, "bad Content-Length")
            return
        try:
            status, kind, payload = self.api.handle(method, self.path, body)
        except Exception as e:  # handle() catches request errors; this is a last resort
            traceback.print_exc()
            status, kind = 500, "application/json"
            payload = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
        self.send_response(status)
        if status == 302:
            self.send_header("Location", kind)
            payload = b""
        else:
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def do_DELETE(self):
        self._serve("DELETE")

    def log_message(self, format, *args):  # quiet: the dev server prints its own lines
        pass


def make_rest_server(registry, host="127.0.0.1", port=8501, ui_dir=None, collection=None):
    """A ThreadingHTTPServer speaking TF Serving's REST API; returns ``(server, bound port)``.
    Run it with ``server.serve_forever()`` (e.g. in a thread), stop with ``server.shutdown()``."""
    handler = type("RestHandler", (_Handler,), {"api": RestApi(registry, ui_dir, collection)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server, server.server_address[1]


def serve_in_thread(server):
    """Start ``server.serve_forever`` in a daemon thread; returns the thread."""
    thread = threading.Thread(target=server.serve_forever, name="rest-api", daemon=True)
    thread.start()
    return thread
