"""A small gRPC client for an exported CLIP served by TF Serving (or ``export.serve``).

Example:
    >>> client = CLIPClient("127.0.0.1:8500", "clip")
    >>> client.encode_text(["a red circle"]).shape              # (1, D), L2-normalised
    >>> client.zero_shot([open("cat.jpg", "rb").read()], ["cat", "dog"])["probabilities"]
    $ python -m export.client --address 127.0.0.1:8500 --model clip text "a red circle"
    $ python -m export.client --model clip zero-shot cat.jpg --labels cat dog
"""

import argparse
import json
import sys

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from keras_clip.cli import add_tf_logs_flag

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def string_tensor(values):
    """list (or nested list) of bytes/str → tf.string TensorProto (no TensorFlow needed)."""
    arr = np.array(values, dtype=object)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in arr.shape]))
    proto.string_val.extend(v.encode("utf-8") if isinstance(v, str) else bytes(v)
                            for v in arr.reshape(-1))
    return proto


def to_numpy(proto):
    """TensorProto of the CLIP signatures' outputs (float, int64, string) → numpy."""
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == types_pb2.DT_FLOAT:
        flat = (np.frombuffer(proto.tensor_content, np.float32) if proto.tensor_content
                else np.array(proto.float_val, np.float32))
    elif proto.dtype == types_pb2.DT_INT64:
        flat = (np.frombuffer(proto.tensor_content, np.int64) if proto.tensor_content
                else np.array(proto.int64_val, np.int64))
    elif proto.dtype == types_pb2.DT_STRING:
        flat = np.array(list(proto.string_val), dtype=object)
    else:
        raise ValueError(f"unsupported output dtype {types_pb2.DataType.Name(proto.dtype)}")
    if flat.size == 1 and int(np.prod(shape)) > 1:  # a single repeated value
        flat = np.repeat(flat, int(np.prod(shape)))
    return flat.reshape(shape)


class CLIPClient:
    """encode_text / encode_image / zero_shot / metadata / status over TF Serving's gRPC API.

    Example:
        >>> c = CLIPClient("127.0.0.1:8500", "clip")
        >>> c.status()
        [{'version': 1, 'state': 'AVAILABLE'}]
    """

    def __init__(self, address="127.0.0.1:8500", model_name="clip", version=None, timeout=60.0,
                 max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES):
        self.model_name, self.version, self.timeout = model_name, version, timeout
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self.channel = grpc.insecure_channel(address, options=options)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, spec, signature_name=None):
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = int(self.version)
        if signature_name:
            spec.signature_name = signature_name

    def predict(self, signature_name, inputs, output_filter=()):
        """Raw Predict: ``{name: TensorProto}`` → ``{name: numpy}``."""
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature_name)
        for key, proto in inputs.items():
            request.inputs[key].CopyFrom(proto)
        request.output_filter.extend(output_filter)
        response = self.predictions.Predict(request, timeout=self.timeout)
        return {k: to_numpy(v) for k, v in response.outputs.items()}

    def encode_text(self, texts):
        """list of str → float32 [B, D] L2-normalised embeddings."""
        texts = _as_list(texts, str, "texts")
        return self.predict("encode_text", {"texts": string_tensor(texts)})["embeddings"]

    def encode_image(self, images):
        """list of encoded image bytes (JPEG/PNG/…) → float32 [B, D] L2-normalised."""
        images = _as_list(images, (bytes, bytearray), "images")
        return self.predict("encode_image", {"images": string_tensor(images)})["embeddings"]

    def zero_shot(self, images, labels):
        """Images (bytes) against candidate labels (the same for every image).

        Returns ``{"probabilities": [B, C], "label_index": [B], "label": [B] str}``.
        """
        images = _as_list(images, (bytes, bytearray), "images")
        labels = _as_list(labels, str, "labels")
        out = self.predict("zero_shot", {"images": string_tensor(images),
                                         "labels": string_tensor([labels] * len(images))})
        out["label"] = [b.decode("utf-8") for b in out["label"]]
        return out

    def metadata(self):
        """{signature name: {"inputs": {name: (dtype, shape)}, "outputs": {...}}}."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        response = self.predictions.GetModelMetadata(request, timeout=self.timeout)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)

        def describe(infos):
            return {k: (types_pb2.DataType.Name(v.dtype),
                        [d.size for d in v.tensor_shape.dim]) for k, v in infos.items()}
        return {name: {"inputs": describe(s.inputs), "outputs": describe(s.outputs)}
                for name, s in sorted(sig_map.signature_def.items()) if not name.startswith("__")}

    def status(self):
        """[{"version": int, "state": "AVAILABLE" | ...}] of the model's versions."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self.models.GetModelStatus(request, timeout=self.timeout)
        name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [{"version": s.version, "state": name(s.state)}
                for s in response.model_version_status]


def _as_list(values, kind, what):
    if isinstance(values, (str, bytes, bytearray)):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"{what}: need at least one item")
    for i, v in enumerate(values):
        if not isinstance(v, kind):
            raise TypeError(f"{what}[{i}]: expected {kind}, got {type(v).__name__}")
    return values


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.client",
                                     description="Query a served CLIP over gRPC.")
    parser.add_argument("--address", default="127.0.0.1:8500")
    parser.add_argument("--model", default="clip")
    parser.add_argument("--version", type=int, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("text", help="embed texts").add_argument("texts", nargs="+")
    sub.add_parser("image", help="embed image files").add_argument("files", nargs="+")
    zs = sub.add_parser("zero-shot", help="classify image files among labels")
    zs.add_argument("files", nargs="+")
    zs.add_argument("--labels", nargs="+", required=True)
    sub.add_parser("metadata", help="signatures and their inputs/outputs")
    sub.add_parser("status", help="version states")
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)

    def read(paths):
        out = []
        for p in paths:
            with open(p, "rb") as f:
                out.append(f.read())
        return out

    with CLIPClient(args.address, args.model, args.version) as client:
        try:
            if args.command == "text":
                for text, emb in zip(args.texts, client.encode_text(args.texts)):
                    print(f"{text!r}: {np.array2string(emb[:8], precision=4)}… (dim {len(emb)})")
            elif args.command == "image":
                for path, emb in zip(args.files, client.encode_image(read(args.files))):
                    print(f"{path}: {np.array2string(emb[:8], precision=4)}… (dim {len(emb)})")
            elif args.command == "zero-shot":
                out = client.zero_shot(read(args.files), args.labels)
                for path, probs, label in zip(args.files, out["probabilities"], out["label"]):
                    top = ", ".join(f"{lab} {p:.3f}" for lab, p in
                                    sorted(zip(args.labels, probs), key=lambda x: -x[1])[:5])
                    print(f"{path}: {label}  ({top})")
            elif args.command == "metadata":
                print(json.dumps(client.metadata(), indent=2))
            else:
                print(json.dumps(client.status(), indent=2))
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
