"""TF Serving's gRPC API over SavedModels in TF Serving's layout: the model registry (polling,
version policies, warm-up, hot swaps), ``run_predict`` and the gRPC servicers. ``export.serve``
is the command that runs them (and ``export.rest``'s REST API on the same registry).

Implements ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata; Classify,
Regress and MultiInference answer UNIMPLEMENTED) and ``tensorflow.serving.ModelService``
(GetModelStatus) with the official tensorflow-serving-api protos.
"""


import os
import threading
import time
import traceback
from concurrent import futures

import grpc
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers TF Text ops before any SavedModel loads)
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.apis import status_pb2

from export.saved_model import existing_versions
from export.serving_config import read_models_config, read_warmup_requests

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
_LOADING = get_model_status_pb2.ModelVersionStatus.LOADING


class PredictError(Exception):
    """A request error with its gRPC status code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class _Version:
    """One loaded version: its signature functions and SignatureDefs (read from saved_model.pb,
    so metadata is exactly what TF Serving would report)."""

    def __init__(self, path, version):
        self.path, self.version = path, version
        self.obj = tf.saved_model.load(path)
        self.functions = dict(self.obj.signatures)
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved = saved_model_pb2.SavedModel.FromString(f.read())
        self.signature_defs = saved.meta_graphs[0].signature_def

    def warm_up(self):
        for request in read_warmup_requests(self.path):
            run_predict(self, request)


class _Model:
    """A model of the config: its policy and its currently served versions."""

    def __init__(self, name, base_path, policy):
        self.name, self.base_path, self.policy = name, base_path, policy
        self.versions = {}  # version → _Version; replaced as a whole (readers need no lock)
        self.failed = {}  # version → error message of a failed load (not retried)
        self.loading = None  # the version being loaded (GetModelStatus reports it as LOADING)

    def wanted(self):
        on_disk = [v for v in existing_versions(self.base_path)
                   if os.path.exists(os.path.join(self.base_path, str(v), "saved_model.pb"))]
        kind = self.policy.WhichOneof("policy_choice")
        if kind == "all":
            return on_disk
        if kind == "specific":
            return [v for v in on_disk if v in set(self.policy.specific.versions)]
        n = self.policy.latest.num_versions if kind == "latest" else 1
        return on_disk[-max(n, 1):] if on_disk else []


def run_predict(version, request):
    """Run a PredictRequest on a loaded version; returns the outputs dict of numpy arrays."""
    sig_name = request.model_spec.signature_name or "serving_default"
    fn = version.functions.get(sig_name)
    if fn is None:
        raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unknown signature_name {sig_name!r}; this model has "
                           f"{sorted(version.functions)}")
    specs = fn.structured_input_signature[1]
    unknown = sorted(set(request.inputs) - set(specs))
    missing = sorted(set(specs) - set(request.inputs))
    if unknown or missing:
        raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"signature {sig_name!r} takes inputs {sorted(specs)}; "
                           + (f"unknown input(s) {unknown}" if unknown else "")
                           + ("; " if unknown and missing else "")
                           + (f"missing input(s) {missing}" if missing else ""))
    inputs = {}
    for key, spec in specs.items():
        proto = request.inputs[key]
        if proto.dtype != spec.dtype.as_datatype_enum:
            got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "invalid"
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: expected dtype {spec.dtype.name}, got {got}")
        try:
            value = tf.make_ndarray(proto)
        except Exception as e:  # malformed TensorProto (content size vs shape…)
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: malformed TensorProto: {e}") from None
        if not spec.shape.is_compatible_with(value.shape):
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: expected shape {_shape_str(spec.shape)}, got "
                               f"{list(value.shape)}")
        if value.ndim and value.shape[0] == 0:
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: empty batch (dimension 0 is 0)")
        inputs[key] = tf.constant(value, dtype=spec.dtype)
    try:
        outputs = fn(**inputs)
    except tf.errors.InvalidArgumentError as e:
        raise PredictError(grpc.StatusCode.INVALID_ARGUMENT, _tf_message(e)) from None
    wanted = list(request.output_filter) or sorted(outputs)
    unknown = [k for k in wanted if k not in outputs]
    if unknown:
        raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"output_filter names unknown output(s) {unknown}; signature "
                           f"{sig_name!r} has {sorted(outputs)}")
    return {k: outputs[k].numpy() for k in wanted}


def _shape_str(shape):
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape.as_list()) + "]"


def _tf_message(error):
    """The useful line of a TF op error (the assert/decoder message, without graph noise)."""
    lines = [ln.strip() for ln in error.message.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Graph execution error", "Detected at",
                                                       "<stack", "[[", "defined at"))]
    text = " ".join(useful) or error.message
    return text.split(" [Op:")[0].strip()


class ModelRegistry:
    """The models of a config, kept in sync with the disk by a polling thread."""

    def __init__(self, config_path, container_root="/models", poll_seconds=1.0, log=print):
        self.config_path = os.path.abspath(config_path)
        self.container_root = container_root.rstrip("/")
        self.poll_seconds = poll_seconds
        self.log = log
        self.models = {}
        config = read_models_config(config_path)
        entries = config.model_config_list.config
        if not entries:
            raise ValueError(f"{config_path}: model_config_list has no models")
        for entry in entries:
            if entry.model_platform not in ("", "tensorflow"):
                raise ValueError(f"model {entry.name!r}: model_platform must be 'tensorflow', "
                                 f"got {entry.model_platform!r}")
            self.models[entry.name] = _Model(entry.name, self._resolve(entry.base_path),
                                             entry.model_version_policy)
        self._stop = threading.Event()
        self._thread = None

    def _resolve(self, base_path):
        here = os.path.dirname(self.config_path)
        if not os.path.isabs(base_path):
            return os.path.join(here, base_path)
        if not os.path.exists(base_path) and self.container_root and \
                (base_path + "/").startswith(self.container_root + "/"):
            return os.path.join(here, base_path[len(self.container_root):].lstrip("/"))
        return base_path

    def sync(self):
        """Load wanted versions that are not loaded, then swap; drop unwanted ones."""
        for model in self.models.values():
            wanted = model.wanted()
            current = dict(model.versions)
            loaded = {}
            for v in wanted:
                if v in current or v in model.failed:
                    continue
                path = os.path.join(model.base_path, str(v))
                model.loading = v
                try:
                    t0 = time.time()
                    loaded[v] = _Version(path, v)
                    loaded[v].warm_up()
                    self.log(f"loaded {model.name} version {v} in {time.time() - t0:.1f} s")
                except Exception as e:  # a broken version must not stop the others
                    loaded.pop(v, None)
                    model.failed[v] = f"{type(e).__name__}: {e}"
                    self.log(f"failed to load {model.name} version {v}: {model.failed[v]}")
                finally:
                    model.loading = None
            keep = {v: current[v] for v in wanted if v in current}
            keep.update(loaded)
            if keep != current and (keep or not wanted):
                model.versions = keep  # one assignment: readers see the old or the new dict
                gone = sorted(set(current) - set(keep))
                if gone:
                    self.log(f"unloaded {model.name} version(s) {gone}")

    def start(self):
        self.sync()
        self._thread = threading.Thread(target=self._poll, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _poll(self):
        while not self._stop.wait(self.poll_seconds):
            try:
                self.sync()
            except Exception:  # keep polling; the next round may succeed
                traceback.print_exc()

    def get(self, spec):
        """ModelSpec → _Version, or PredictError NOT_FOUND."""
        model = self.models.get(spec.name)
        if model is None:
            raise PredictError(grpc.StatusCode.NOT_FOUND,
                               f"model {spec.name!r} not found; serving {sorted(self.models)}")
        versions = model.versions
        if spec.HasField("version_label"):
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                               "version_label is not supported by this server; use version")
        if spec.HasField("version"):
            v = spec.version.value
            if v not in versions:
                raise PredictError(grpc.StatusCode.NOT_FOUND,
                                   f"model {spec.name!r} version {v} not found; serving "
                                   f"version(s) {sorted(versions)}")
            return versions[v]
        if not versions:
            raise PredictError(grpc.StatusCode.NOT_FOUND,
                               f"model {spec.name!r} has no loaded version (base path "
                               f"{model.base_path})")
        return versions[max(versions)]


def _handler(method):
    """Turn PredictError into a gRPC status and anything else into INTERNAL, so the server
    keeps serving after every error."""
    def wrapped(self, request, context):
        try:
            return method(self, request, context)
        except PredictError as e:
            context.abort(e.code, str(e))
        except Exception as e:
            traceback.print_exc()
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
    return wrapped


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry):
        self.registry = registry

    @_handler
    def Predict(self, request, context):
        version = self.registry.get(request.model_spec)
        outputs = run_predict(version, request)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version.version
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    @_handler
    def GetModelMetadata(self, request, context):
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"metadata_field must be ['signature_def'], got {fields}")
        version = self.registry.get(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version.version
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in version.signature_defs.items():
            sig_map.signature_def[name].CopyFrom(sig)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def _unimplemented(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "only Predict and GetModelMetadata are implemented by this dev server")

    Classify = Regress = MultiInference = _unimplemented


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry):
        self.registry = registry

    @_handler
    def GetModelStatus(self, request, context):
        name = request.model_spec.name
        model = self.registry.models.get(name)
        if model is None:
            raise PredictError(grpc.StatusCode.NOT_FOUND,
                               f"model {name!r} not found; serving {sorted(self.registry.models)}")
        states = {v: _AVAILABLE for v in model.versions}
        if model.loading is not None and model.loading not in states:
            states[model.loading] = _LOADING
        if request.model_spec.HasField("version"):
            v = request.model_spec.version.value
            if v not in states:
                raise PredictError(grpc.StatusCode.NOT_FOUND,
                                   f"model {name!r} version {v} not found; serving "
                                   f"{sorted(model.versions)}")
            states = {v: states[v]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(states):
            status = response.model_version_status.add()
            status.version, status.state = v, states[v]
            status.status.CopyFrom(status_pb2.StatusProto(error_code=0))
        return response

    def HandleReloadConfigRequest(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "config reload is not implemented")


def make_server(registry, host="127.0.0.1", port=8500, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
                workers=16):
    """A started-able grpc.Server with both services; returns (server, bound port)."""
    options = [("grpc.max_send_message_length", max_message_bytes),
               ("grpc.max_receive_message_length", max_message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    return server, bound
