"""TF Serving configuration files: models.config, batching parameters and warmup requests.

* ``models.config``: a text-proto ``ModelServerConfig`` (``model_config_list``: name, base_path,
  model_platform "tensorflow", model_version_policy).
* ``batching_parameters.txt``: a text-proto ``BatchingParameters`` for ``--enable_batching``.
* ``<version>/assets.extra/tf_serving_warmup_requests``: a TFRecord of ``PredictionLog``s that
  TF Serving replays when it loads a version, so the first real request is not slow.

Base paths are written as the server sees them: ``/models/<name>`` by default, for the docker
command that mounts the output directory at ``/models`` (``export.serve`` maps ``/models/...``
back onto the config file's directory).

Example:
    >>> write_models_config("runs/demo/serving/models.config", {"clip": "/models/clip"})
    >>> write_batching_parameters("runs/demo/serving/batching_parameters.txt")
    $ python -m export.serving_config --out runs/demo/serving --model clip
"""

import argparse
import os
import sys

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from keras_clip.cli import add_tf_logs_flag

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
CONTAINER_ROOT = "/models"


def models_config(models, policy="latest", versions=None):
    """``{name: base_path}`` → ModelServerConfig proto.

    policy: "latest" (newest version only), "all", or "specific" (``versions``: list of ints).
    """
    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in models.items():
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, base_path, "tensorflow"
        vp = entry.model_version_policy
        if policy == "latest":
            vp.latest.num_versions = 1
        elif policy == "all":
            vp.all.SetInParent()
        elif policy == "specific":
            if not versions:
                raise ValueError("policy 'specific' needs a non-empty list of versions")
            vp.specific.versions.extend(int(v) for v in versions)
        else:
            raise ValueError(f"policy must be 'latest', 'all' or 'specific', got {policy!r}")
    return config


def write_models_config(path, models, policy="latest", versions=None):
    """Write ``models.config`` (text proto) to ``path``; returns the path."""
    text = text_format.MessageToString(models_config(models, policy, versions))
    _write_text(path, text)
    return path


def read_models_config(path):
    """Parse a ``models.config`` text proto into a ModelServerConfig."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a ModelServerConfig text proto: {e}") from None


def write_batching_parameters(path, max_batch_size=32, batch_timeout_micros=2000,
                              max_enqueued_batches=100, num_batch_threads=2):
    """Write a BatchingParameters text proto (for ``--batching_parameters_file``)."""
    # The pip tensorflow-serving-api has no BatchingParameters proto: the text form is
    # written directly (each field is a google.protobuf wrapper message).
    fields = dict(max_batch_size=max_batch_size, batch_timeout_micros=batch_timeout_micros,
                  max_enqueued_batches=max_enqueued_batches, num_batch_threads=num_batch_threads)
    for name, value in fields.items():
        if int(value) != value or value < (0 if name == "batch_timeout_micros" else 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    _write_text(path, "".join(f"{k} {{ value: {int(v)} }}\n" for k, v in fields.items()))
    return path


def _write_text(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)  # TF Serving re-reads the config file: never show a partial one


def predict_request(model_name, signature_name, inputs, version=None):
    """PredictRequest of numpy/list inputs (``{name: array}``)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def sample_png(size=32):
    """A small PNG (a gradient) for warmup and smoke tests."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    img = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128.0), -1)
    return tf.io.encode_png(img.astype(np.uint8)).numpy()


def clip_warmup_requests(model_name, image_size=32):
    """One PredictRequest per CLIP signature (text, image, zero-shot)."""
    png = sample_png(image_size)
    return [
        predict_request(model_name, "serving_default", {"texts": np.array([b"a photo"])}),
        predict_request(model_name, "encode_text", {"texts": np.array([b"a photo"])}),
        predict_request(model_name, "encode_image", {"images": np.array([png])}),
        predict_request(model_name, "zero_shot", {"images": np.array([png]),
                                                  "labels": np.array([[b"cat", b"dog"]])}),
    ]


def write_warmup_requests(version_dir, requests):
    """Write ``version_dir/assets.extra/tf_serving_warmup_requests`` (TFRecord of PredictionLog)."""
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(version_dir):
    """The PredictRequests of a version's warmup file (empty list if there is none)."""
    path = os.path.join(version_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    out = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        out.append(log.predict_log.request)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m export.serving_config",
        description="Write models.config and batching_parameters.txt for TF Serving.")
    parser.add_argument("--out", required=True, help="directory mounted at /models in docker")
    parser.add_argument("--model", action="append", default=None,
                        help="model name (a sub-directory of --out); repeatable (default: clip)")
    parser.add_argument("--policy", default="latest", choices=("latest", "all", "specific"))
    parser.add_argument("--versions", type=int, nargs="*", help="versions for --policy specific")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-micros", type=int, default=2000)
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)
    names = args.model or ["clip"]
    try:
        config = write_models_config(os.path.join(args.out, "models.config"),
                                     {n: f"{CONTAINER_ROOT}/{n}" for n in names},
                                     args.policy, args.versions)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    batching = write_batching_parameters(os.path.join(args.out, "batching_parameters.txt"),
                                         args.max_batch_size, args.batch_timeout_micros)
    print(f"wrote {config} and {batching}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
