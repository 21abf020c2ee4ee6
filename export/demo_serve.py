"""Serving demo: export the demo CLIP (and dVAE, DALL·E), serve them over gRPC, query, stop.

1. exports ``--clip`` to ``OUT/clip/1`` (and ``--dvae`` to ``OUT/dvae/1``, ``--dalle`` with
   its dVAE and the CLIP reranker to ``OUT/dalle/1``), writes
   ``OUT/models.config`` and ``OUT/batching_parameters.txt`` (the docker layout: mount OUT at
   /models);
2. starts ``python -m export.serve`` on a free local port and waits for it;
3. over gRPC (``export.client``): each caption of a few generated shapes images → the nearest
   image; each image → its zero-shot label among the 30 shapes classes; a token grid → PNG
   through the dVAE; a prompt → the best generated PNGs with their CLIP scores (DALL·E);
4. stops the server (SIGTERM).

Example:
    $ python -m export.demo_serve --clip runs/demo/clip.keras --out runs/demo/serving
"""

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from keras_clip.cli import add_tf_logs_flag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _step(msg):
    print(f"[demo-serve] {msg}", flush=True)


def start_server(config, timeout=600, extra_args=()):
    """Start ``export.serve`` on a free port; returns (process, address) once it is ready."""
    cmd = [sys.executable, "-m", "export.serve", "--model-config", config, "--port", "0",
           *extra_args]
    env = dict(os.environ,  # TensorFlow's logs as in this process (keras_clip/cli.py)
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    ready, lines = threading.Event(), []

    def read():
        for line in proc.stdout:
            lines.append(line)
            print(f"  server | {line.rstrip()}", flush=True)
            if line.startswith("serving on "):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    start = time.time()
    while not ready.wait(5):
        if proc.poll() is not None or time.time() - start > timeout:
            proc.kill()
            raise RuntimeError("the server did not start; its last lines:\n" + "".join(lines[-20:]))
        _step(f"waiting for the server ({time.time() - start:.0f} s)…")
    address = next(ln for ln in lines if ln.startswith("serving on ")).split()[-1]
    return proc, address


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _png_bytes(images):
    import tensorflow as tf
    return [tf.io.encode_png(img).numpy() for img in images]


def query_clip(client, image_size, num_images=6, seed=0):
    """Caption → nearest image, and image → zero-shot label, over gRPC. Returns accuracies."""
    from keras_clip.data.shapes import class_names, generate_shapes

    data = generate_shapes(num_images, split="val", image_size=image_size, seed=seed)
    images = _png_bytes(data["images"])
    names = class_names()

    _step(f"retrieval: {num_images} captions against {num_images} generated images")
    image_emb = client.encode_image(images)
    text_emb = client.encode_text(data["captions"])
    nearest = (text_emb @ image_emb.T).argmax(axis=1)
    for i, caption in enumerate(data["captions"]):
        mark = "✓" if nearest[i] == i else "✗"
        print(f"  {mark} {caption!r:60} → image {nearest[i]} (true {i})")
    retrieval = float(np.mean(nearest == np.arange(num_images)))

    # The export's template (here "a large {}", the demo captions' form) turns each class name
    # into its prompt.
    _step(f"zero-shot: {num_images} images among the {len(names)} shapes classes")
    out = client.zero_shot(images, names)
    for i, (label, probs) in enumerate(zip(out["label"], out["probabilities"])):
        truth = names[data["labels"][i]]
        mark = "✓" if label == truth else "✗"
        print(f"  {mark} image {i}: {label!r} (p={probs.max():.2f}), true {truth!r}")
    zero_shot = float(np.mean([lab == names[t] for lab, t in zip(out["label"], data["labels"])]))
    return {"retrieval_top1": retrieval, "zero_shot_top1": zero_shot}


def query_dvae(address, out_dir, grid):
    """A random token grid → PNG through the served dVAE decoder."""
    import tensorflow as tf
    from export.client import to_numpy
    from export.serving_config import predict_request
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    tokens = np.random.default_rng(0).integers(0, 16, (1, grid, grid)).astype(np.int32)
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(predict_request("dvae", "decode", {"tokens": tokens}), timeout=120)
    png = to_numpy(response.outputs["images"])[0]
    path = os.path.join(out_dir, "dvae_decode.png")
    with open(path, "wb") as f:
        f.write(png)
    shape = tf.io.decode_png(png).shape
    _step(f"dVAE decode: {grid}x{grid} tokens → {shape[0]}x{shape[1]} PNG at {path}")
    return path


def query_dalle(address, out_dir, prompt, num_samples=8, keep=2):
    """A prompt → the best `keep` of `num_samples` generated PNGs (CLIP-reranked in the graph)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from export.client import to_numpy
    from export.serving_config import predict_request

    request = predict_request("dalle", "generate", {
        "prompts": np.array([prompt.encode()], dtype=object),
        "num_samples": np.array(num_samples, np.int32), "keep": np.array(keep, np.int32),
        "seed": np.array(0, np.int32)})
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=600)
    pngs = to_numpy(response.outputs["images"])[0]
    scores = to_numpy(response.outputs["scores"])[0]
    paths = []
    for i, (png, score) in enumerate(zip(pngs, scores)):
        paths.append(os.path.join(out_dir, f"dalle_{i}.png"))
        with open(paths[-1], "wb") as f:
            f.write(png)
    _step(f"DALL·E generate {prompt!r}: best {keep} of {num_samples} samples, CLIP scores "
          + ", ".join(f"{x:.1f}" for x in scores) + f" → {', '.join(paths)}")
    return paths, scores


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.demo_serve",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--clip", required=True, help="trained CLIP .keras")
    parser.add_argument("--dvae", default=None, help="trained dVAE .keras (optional)")
    parser.add_argument("--dalle", default=None,
                        help="trained DALLE .keras (optional; needs --dvae): serves `generate`")
    parser.add_argument("--prompt", default="a large red circle", help="the DALL·E demo prompt")
    parser.add_argument("--out", required=True, help="serving directory (mount at /models)")
    parser.add_argument("--num-images", type=int, default=6)
    parser.add_argument("--fast-load", action="store_true", help="passed to export.serve")
    add_tf_logs_flag(parser)
    args = parser.parse_args(argv)
    if args.dalle and not args.dvae:
        print("error: --dalle needs --dvae (the images are decoded by the dVAE)", file=sys.stderr)
        return 2
    for path in filter(None, [args.clip, args.dvae, args.dalle]):
        if not os.path.exists(path):
            print(f"error: no model file at {path}", file=sys.stderr)
            return 2

    from export.client import CLIPClient
    from export.saved_model import export_clip, load_clip_model
    from export.serving_config import write_batching_parameters, write_models_config

    t0 = time.time()
    _step(f"loading {args.clip}")
    clip = load_clip_model(args.clip)
    _step(f"exporting CLIP → {args.out}/clip/1 (tokenizer and image decoding in the graph)")
    # Version 1, replaced on every run: the demo owns this directory.
    # The demo CLIP learnt captions like "a large red circle": prompt it the same way.
    export_clip(clip, os.path.join(args.out, "clip"), version=1, overwrite=True,
                template="a large {}")
    models = {"clip": "/models/clip"}
    grid = None
    if args.dvae:
        from export.dvae_saved_model import export_dvae
        from keras_clip.saving import load_model
        from keras_dalle import DiscreteVAE
        _step(f"exporting dVAE decoder → {args.out}/dvae/1")
        vae = load_model(args.dvae, DiscreteVAE)
        export_dvae(vae, os.path.join(args.out, "dvae"), version=1, overwrite=True)
        models["dvae"] = "/models/dvae"
        grid = vae.token_grid_size
    if args.dalle:
        from export.dalle_saved_model import export_dalle
        from keras_clip.saving import load_model
        from keras_dalle import DALLE
        _step(f"exporting DALL·E generate (tokenizer, cached sampling loop, dVAE, CLIP rerank) → "
              f"{args.out}/dalle/1")
        export_dalle(load_model(args.dalle, DALLE), vae, os.path.join(args.out, "dalle"), clip=clip,
                     version=1, overwrite=True)
        models["dalle"] = "/models/dalle"
    config = write_models_config(os.path.join(args.out, "models.config"), models)
    write_batching_parameters(os.path.join(args.out, "batching_parameters.txt"))
    _step(f"wrote {config} and batching_parameters.txt ({time.time() - t0:.0f} s)")

    _step("starting the dev gRPC server (export.serve)")
    proc, address = start_server(config, extra_args=["--fast-load"] if args.fast_load else [])
    try:
        with CLIPClient(address, "clip") as client:
            _step(f"server ready at {address}: {client.status()}")
            results = query_clip(client, clip.image_size, args.num_images)
        if grid:
            query_dvae(address, args.out, grid)
        if args.dalle:
            query_dalle(address, args.out, args.prompt)
        _step(f"results: {results}")
    finally:
        _step("stopping the server")
        code = stop_server(proc)
    _step(f"done in {time.time() - t0:.0f} s (server exit code {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
