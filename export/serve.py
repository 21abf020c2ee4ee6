"""A development gRPC server speaking TF Serving's API, for SavedModels in TF Serving's layout.

Implements ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata; Classify,
Regress and MultiInference answer UNIMPLEMENTED) and ``tensorflow.serving.ModelService``
(GetModelStatus) with the official tensorflow-serving-api protos, so clients written for
``tensorflow_model_server`` work unchanged. Meant for development and tests on machines without
docker; production should run stock TF Serving (see the README).

* Reads a ``models.config`` (ModelServerConfig text proto). A ``base_path`` under
  ``--container-root`` (default ``/models``) that does not exist here is looked up relative to
  the config file's directory, so the docker config works as is.
* Polls every base path (``--poll-seconds``, default 1) in a background thread and follows each
  model's version policy (latest N, all, specific). A new version is loaded (and warmed up with
  its ``assets.extra`` requests) before it is swapped in; requests in flight finish on the old
  one, so a hot swap fails no request.
* Errors: unknown model/version → NOT_FOUND; bad signature, input name, dtype, shape, empty
  batch or non-image bytes → INVALID_ARGUMENT naming the problem; a message over the size limit
  → RESOURCE_EXHAUSTED (grpc's own check).

* ``--rest-port 8501`` also serves TF Serving's REST API (``export.rest``) on the same models;
  ``--ui`` adds the search page (``export/web``) at ``http://HOST:REST_PORT/ui/`` and ``--index
  DIR`` the collection's image files at ``/images/<id>`` for its thumbnails.

Example:
    $ python -m export.serve --model-config runs/demo/serving/models.config --port 8500
    serving on 127.0.0.1:8500
    $ python -m export.serve --model-config models.config --rest-port 8501 --ui --index DIR
"""

import argparse
import signal
import sys
import threading

import tensorflow as tf

from keras_clip.cli import add_tf_logs_flag
from export.grpc_server import DEFAULT_MAX_MESSAGE_BYTES, ModelRegistry, make_server
from export.rest import WEB_DIR, make_rest_server, serve_in_thread
from export.search_signature import load_collection


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.serve",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model-config", required=True, help="models.config (text proto)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8500, help="0 picks a free port")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="gRPC send/receive limit (default 64 MB)")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("--container-root", default="/models",
                        help="base paths under this prefix are mapped onto the config's directory")
    parser.add_argument("--workers", type=int, default=16, help="gRPC worker threads")
    parser.add_argument("--fast-load", action="store_true",
                        help="turn off Grappler: versions load and warm up ~4x faster, requests "
                             "run up to ~2x slower (the tokenizer's big constant tables make "
                             "graph optimisation slow)")
    parser.add_argument("--rest-port", type=int, default=None,
                        help="also serve TF Serving's REST API on this port (0 picks a free "
                             "port; default: no REST API)")
    parser.add_argument("--ui", action="store_true",
                        help="serve the search page at /ui/ on the REST port (needs --rest-port)")
    parser.add_argument("--index", default=None, metavar="DIR",
                        help="an embedding folder (python -m keras_clip.embed) whose image files "
                             "the REST port serves at /images/<id>, for the page's thumbnails")
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)
    if (args.ui or args.index) and args.rest_port is None:
        parser.error("--ui and --index need --rest-port")
    if args.fast_load:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

    def log(msg):
        print(msg, flush=True)

    try:
        registry = ModelRegistry(args.model_config, args.container_root, args.poll_seconds, log)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    collection = None
    if args.index:
        try:
            collection = load_collection(args.index)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    registry.start()
    server, port = make_server(registry, args.host, args.port, args.max_message_bytes, args.workers)
    server.start()
    rest = None
    if args.rest_port is not None:
        rest, rest_port = make_rest_server(registry, args.host, args.rest_port,
                                           ui_dir=WEB_DIR if args.ui else None,
                                           collection=collection)
        serve_in_thread(rest)
        log(f"REST API on {args.host}:{rest_port}")
        if args.ui:
            log(f"search page at http://{args.host}:{rest_port}/ui/")
    stopped = threading.Event()

    def stop(signum, frame):
        log(f"received signal {signum}, stopping")
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for name, model in registry.models.items():
        log(f"model {name}: base path {model.base_path}, versions {sorted(model.versions)}")
    log(f"serving on {args.host}:{port}")
    while not stopped.wait(0.5):
        pass
    registry.stop()
    if rest is not None:
        rest.shutdown()
    server.stop(grace=5).wait()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
