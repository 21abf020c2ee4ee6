"""CLIP inference at real sizes, measured fairly: keras_clip's image and text embeddings
(float32 and mixed bfloat16) vs open_clip 3.3.0 (eager, torch.compile, bfloat16 autocast) and
keras-hub's CLIPBackbone on CPU (issue 18).

    .venv-ref/bin/python benchmarks/clip_infer.py --presets ViT-B-32 RN50 --batch-sizes 1 32 \\
        --reps 5 --steps 10 --warmup 2 --output benchmarks/results/clip_infer.json
    .venv-ref/bin/python benchmarks/clip_infer.py --presets ViT-S-Demo --batch-sizes 8 \\
        --reps 2 --steps 2 --warmup 1                                      # a quick check

What is measured, per row, preset and batch size, in each process, for the image tower and
then the text tower separately: the first call (timed: tracing and XLA compilation or
torch.compile included; building the model not included), ``--warmup`` untimed calls, then
``--steps`` timed calls: items/s = steps × batch / their time. Every call returns
L2-normalised (B, embed_dim) embeddings (keras-hub: its unnormalised projections, what
``get_vision_embeddings`` / ``get_text_embeddings`` give; normalising is negligible) and is
finished when timed (TensorFlow outputs read back with ``.numpy()``; torch runs
synchronously on CPU). GFLOP/s = items/s × the tower's forward FLOPs per item (counted with
torch.utils.flop_counter on open_clip's model of the same architecture); "% of own peak"
divides by the row's framework's matmul peak at the row's precision, measured in the same run.

Rows (``--rows``):
  ours           float32; images through ``keras_clip.embed.make_image_encoder`` — the image
                 embedding job's encoder, a tf.function(jit_compile=True) (XLA) around
                 ``encode_image`` + L2 normalisation, the fastest public path; texts through
                 the same wrapper around ``embed_texts`` (tf.function(jit_compile=True); the
                 library's own text callers, zero_shot_classifier and evaluate, call
                 ``encode_text`` eagerly or in a plain tf.function)
  ours-bf16      the same under keras.mixed_precision "mixed_bfloat16", set before the model is
                 built, as keras_clip/train.py --mixed-precision (embeddings returned float32)
  ours-graph, ours-bf16-graph
                 the same functions as plain tf.functions (jit_compile=False): TensorFlow's graph
                 with its oneDNN matmuls instead of XLA's (``make_image_encoder(model,
                 jit_compile=False)``, as ``keras_clip.embed --no-xla``)
  torch-eager    open_clip.model.CLIP of the same config (QuickGELU, as our presets), float32,
                 ``encode_image`` / ``encode_text(normalize=True)`` under torch.inference_mode()
  torch-compile  the same calls through torch.compile (default mode; cold inductor cache)
  torch-bf16     the eager calls under torch.autocast("cpu", torch.bfloat16)
  keras-hub      keras_hub.models.CLIPBackbone built from CLIPVisionEncoder / CLIPTextEncoder
                 configs of the same architecture (QuickGELU, random init, float32);
                 ``get_vision_embeddings`` / ``get_text_embeddings`` as Keras models run with
                 ``predict_on_batch`` — the predict function ``predict`` runs (a tf.function;
                 Keras' jit_compile="auto" is off on a CPU-only machine), without predict's
                 per-call dataset set-up. keras-hub has no ResNet CLIP: "n/a" for RN presets.

Fairness: the same synthetic inputs on both sides (NHWC float32 images for Keras, the same
values NCHW for torch; 77 token ids: BOS, 12 random tokens, EOS, zeros), fresh processes, both
frameworks' thread pools pinned alike, rows interleaved with a rotating order (see
`fair_runner`).
"""

import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fair_runner as fr  # noqa: E402

ROWS = {
    "ours": dict(label="keras_clip fp32, XLA (tf.function(jit_compile=True))", framework="tf"),
    "ours-bf16": dict(label="keras_clip mixed_bfloat16, XLA", framework="tf", bf16=True),
    "ours-graph": dict(label="keras_clip fp32, TF graph (tf.function)", framework="tf",
                       graph=True),
    "ours-bf16-graph": dict(label="keras_clip mixed_bfloat16, TF graph", framework="tf",
                            bf16=True, graph=True),
    "torch-eager": dict(label="open_clip fp32, eager", framework="torch"),
    "torch-compile": dict(label="open_clip fp32, torch.compile", framework="torch", compile=True),
    "torch-bf16": dict(label="open_clip bf16 autocast, eager", framework="torch", bf16=True),
    "keras-hub": dict(label="keras-hub CLIPBackbone fp32, predict_on_batch", framework="tf",
                      keras_hub=True, vit_only="keras-hub has no ResNet CLIP"),
}
TOWERS = ("image", "text")


def time_towers(c, calls, inputs, sync):
    """Times ``calls[tower](inputs[tower])`` for each tower (see `fair_runner.time_steps`)."""
    return {tower: fr.time_steps(lambda: calls[tower](inputs[tower]), c["warmup"], c["steps"],
                                 sync)[0] for tower in TOWERS}


def keras_hub_models(cfg):
    """keras-hub's CLIPBackbone of our preset config ``cfg``: (image model, text model, its
    parameter count), each a Keras model from an input to the projected embeddings."""
    import keras
    import keras_hub
    s, tw = cfg["image_size"], cfg["text_width"]
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=cfg["vision_patch_size"], hidden_dim=cfg["vision_width"],
        num_layers=cfg["vision_layers"], num_heads=cfg["vision_heads"],
        intermediate_dim=int(cfg["vision_width"] * cfg["mlp_ratio"]), image_shape=(s, s, 3),
        intermediate_activation=cfg["activation"])
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=cfg["vocab_size"], embedding_dim=tw, hidden_dim=tw,
        num_layers=cfg["text_layers"], num_heads=cfg["text_heads"],
        intermediate_dim=int(tw * cfg["mlp_ratio"]), max_sequence_length=cfg["context_length"],
        intermediate_activation=cfg["activation"])
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=cfg["embed_dim"])
    images = keras.Input((s, s, 3))
    ids = keras.Input((cfg["context_length"],), dtype="int32")
    return (keras.Model(images, backbone.get_vision_embeddings(images)),
            keras.Model(ids, backbone.get_text_embeddings(ids)), backbone.count_params())


def ours_child(c):
    """Our XLA embedding functions, or keras-hub's predict functions (``c["keras_hub"]``)."""
    import tensorflow as tf
    images, ids = (tf.constant(x) for x in fr.synthetic_batch(c["config"], c["batch"]))
    if c.get("keras_hub"):
        import keras
        keras.utils.set_random_seed(0)
        image_model, text_model, params = keras_hub_models(c["config"])
        calls = dict(image=image_model.predict_on_batch, text=text_model.predict_on_batch)
        names = ("tensorflow", "keras", "keras_hub")
    else:
        from keras_clip.embed import make_image_encoder
        model, _ = fr.ours_model(c)
        xla = not c.get("graph")  # the -graph rows: TensorFlow's graph (oneDNN kernels), no XLA
        calls = dict(image=make_image_encoder(model, jit_compile=xla),
                     text=tf.function(model.embed_texts, jit_compile=xla, reduce_retracing=True))
        params, names = model.count_params(), ("tensorflow", "keras")
    result = time_towers(c, calls, dict(image=images, text=ids), sync=lambda r: r.numpy()
                         if hasattr(r, "numpy") else r)
    return dict(result, params=params, versions=fr.versions(*names))


def torch_child(c):
    """open_clip's encode_image / encode_text(normalize=True), eager or compiled."""
    import open_clip
    import torch
    model = fr.open_clip_model(c["config"]).eval()
    calls = dict(image=lambda x: model.encode_image(x, normalize=True),
                 text=lambda t: model.encode_text(t, normalize=True))
    if c.get("compile"):
        calls = {tower: torch.compile(fn) for tower, fn in calls.items()}
    images, ids = (torch.from_numpy(x)  # (B, 3, S, S) float32, (B, 77) int64
                   for x in fr.synthetic_batch(c["config"], c["batch"], nchw=True))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if c.get("bf16") else \
        contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        result = time_towers(c, calls, dict(image=images, text=ids), sync=lambda r: r)
    return dict(result, params=sum(p.numel() for p in model.parameters()),
                versions=dict(fr.versions("torch"), open_clip=open_clip.__version__))


def report(data, rows):
    a = data["args"]
    lines = fr.header("CLIP inference: keras_clip vs open_clip 3.3.0 and keras-hub (CPU)", data)
    lines += [f"Per process and tower: the first call (timed, compile included), untimed calls: "
              f"{a['warmup']}, timed calls: {a['steps']}; items/s over the timed calls; GFLOP/s "
              "= items/s × the tower's forward FLOPs per item; % of own peak: of the row's "
              "framework's matmul peak at its precision.", ""]
    for preset, d in data["presets"].items():
        if "error" in d:
            continue
        for b in a["batch_sizes"]:
            for tower, unit in (("image", "images"), ("text", "texts")):
                lines += [f"## {preset}, batch {b}: {tower} embeddings", ""]
                lines += fr.speed_table(data, rows, preset, b, tower,
                                        d["open_clip"]["flops"][tower], unit, "first call")
                lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    fr.main(__file__, __doc__, ROWS, dict(tf=ours_child, torch=torch_child), report,
            batch_sizes=[1, 32], steps=10, warmup=2)
