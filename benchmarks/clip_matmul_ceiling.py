"""How fast a CLIP training step could be if it did nothing but its own matmuls and convolutions,
each at the speed TensorFlow runs that op alone (issue 18: what limits "≥ 90% of the matmul
peak").

The fair benchmark (`clip_train.py`) rates a step by the 2048² @ 2048² matmul peak. The step's
own matmuls are smaller (ViT-B/32 at batch 16: 800 × 768 @ 768 × 3072 and the like) and their
backward passes transposed, and oneDNN runs them below that peak even alone. This script traces
the forward + backward pass of `clip_train.py`'s "ours" model (TensorFlow's graph, float32 unless
``--mixed-precision``; `fair_runner.towers_forward_backward`, which `clip_step_breakdown.py`
times),
lists every MatMul, BatchMatMul and Conv2D op (forward and gradient) with its static shapes,
runs each distinct op alone (its own tf.function, inputs random, enough copies per call to take
≥ 20 ms, median of ``--reps`` calls), and prints, in one process with TensorFlow's intra-op
threads 2 / inter-op 1:

- each op kind's FLOPs, isolated time per step and GFLOP/s;
- the sum: the step's matmul + convolution time at isolated speed (a floor for the step: the
  rest of the step — optimizer, norms, activations, softmax, copies — comes on top);
- the 2048² peak of the same process, and the best % of that peak a step made of these ops can
  reach: step FLOPs over that floor (ViT: 3 × the analytic forward count, as `clip_train.py`
  rates it; ResNets: the traced ops' own FLOPs).

``--inference`` traces the towers' forward pass (``embed_images`` and ``embed_texts``)
instead; ``--torch`` also times the same MatMul / BatchMatMul shapes with torch (a fresh child
process, threads 2 / inter-op 1; forward convolutions too, NCHW as open_clip runs them; not the
convolutions' gradients), so that a framework's kernels can be told from its step.

    .venv-ref/bin/python benchmarks/clip_matmul_ceiling.py ViT-B-32 16 --torch
    .venv-ref/bin/python benchmarks/clip_matmul_ceiling.py ViT-B-32 32 --inference --torch
    .venv-ref/bin/python benchmarks/clip_matmul_ceiling.py RN50 64 --json out.json

Ops inside nested functions (the fused activations, LayerNorm's custom gradient) are not walked;
they hold no matmul or convolution in these models (the script says how many it skipped).
"""
import argparse
import collections
import json
import math
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fair_runner as fr  # noqa: E402

KINDS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D", "Conv2DBackpropInput",
         "Conv2DBackpropFilter", "DepthwiseConv2dNative")
_ATTRS = {"MatMul": ("transpose_a", "transpose_b"), "BatchMatMulV2": ("adj_x", "adj_y"),
          "BatchMatMulV3": ("adj_x", "adj_y", "Tout"),
          "Conv2D": ("strides", "padding", "data_format", "dilations", "explicit_paddings"),
          "Conv2DBackpropInput": ("strides", "padding", "data_format", "dilations",
                                  "explicit_paddings"),
          "Conv2DBackpropFilter": ("strides", "padding", "data_format", "dilations",
                                   "explicit_paddings"),
          "DepthwiseConv2dNative": ("strides", "padding", "data_format", "dilations")}


def op_flops(op_type, shapes, out_shape, attrs):
    """Multiply-adds × 2 of one op from its static input/output shapes."""
    if op_type == "MatMul":
        a, _ = shapes
        k = a[0] if attrs["transpose_a"] else a[1]
        return 2 * math.prod(out_shape) * k
    if op_type.startswith("BatchMatMul"):
        a = shapes[0]
        k = a[-2] if attrs["adj_x"] else a[-1]
        return 2 * math.prod(out_shape) * k
    if op_type == "Conv2D":
        f = shapes[1]  # (kh, kw, cin, cout)
        return 2 * math.prod(out_shape) * f[0] * f[1] * f[2]
    if op_type == "Conv2DBackpropInput":
        f, dy = shapes[1], shapes[2]
        return 2 * math.prod(dy) * f[0] * f[1] * f[2]
    if op_type == "Conv2DBackpropFilter":
        dy = shapes[2]
        return 2 * math.prod(dy) * out_shape[0] * out_shape[1] * out_shape[2]
    if op_type == "DepthwiseConv2dNative":
        f = shapes[1]
        return 2 * math.prod(out_shape) * f[0] * f[1]
    raise ValueError(op_type)


def collect(graph):
    """[(key, op_type, input specs, attrs, flops)] of the matmul/conv ops of ``graph`` that its
    outputs depend on, and the number of nested function calls not walked. An input spec is
    ("const", value) for a constant input (a convolution's sizes) or ("random", shape, dtype)."""
    import tensorflow as tf
    # Only ops the outputs depend on: a gradient function also emits products nobody asked
    # for (the images' gradient), which the runtime prunes before running the graph.
    needed, todo = set(), [t.op for t in graph.outputs]
    while todo:
        op = todo.pop()
        if op.name in needed:
            continue
        needed.add(op.name)
        todo.extend(t.op for t in op.inputs)
        todo.extend(op.control_inputs)
    found, nested = [], 0
    for op in graph.get_operations():
        if op.name not in needed:
            continue
        if op.type in ("StatefulPartitionedCall", "PartitionedCall"):
            nested += 1
        if op.type not in KINDS:
            continue
        specs, shapes = [], []
        for t in op.inputs:
            value = tf.get_static_value(t) if t.dtype in (tf.int32, tf.int64) else None
            if value is None and t.dtype in (tf.int32, tf.int64):
                # a convolution gradient's input_sizes / filter_sizes (often a ShapeN, which
                # get_static_value does not fold): the op's own output shape
                value = np.array(op.outputs[0].shape.as_list())
                if None in value.tolist():
                    raise ValueError(f"{op.name} ({op.type}): sizes input {t.name} is not static")
            if value is not None:
                specs.append(("const", value.tolist()))
                shapes.append(tuple(value.tolist()))
                continue
            shape = t.shape.as_list()
            if None in shape:
                raise ValueError(f"{op.name} ({op.type}): input {t.name} has a dynamic shape "
                                 f"{shape}; the script needs a static batch")
            specs.append(("random", tuple(shape), t.dtype.name))
            shapes.append(tuple(shape))
        attrs = {}
        for a in _ATTRS[op.type]:
            try:
                v = op.get_attr(a)
            except ValueError:
                continue
            attrs[a] = v.decode() if isinstance(v, bytes) else (
                tf.dtypes.as_dtype(v).name if a == "Tout" else v)
        out_shape = tuple(op.outputs[0].shape.as_list())
        flops = op_flops(op.type, shapes, out_shape, attrs)
        key = json.dumps([op.type, [list(map(str, s)) for s in specs],
                          sorted((k, str(v)) for k, v in attrs.items())])
        found.append((key, op.type, specs, attrs, flops))
    return found, nested


def copies_for(flops, peak):
    """Independent calls per timed call, so that each timed call does ≥ 20 ms of work (1–16)."""
    return max(1, min(16, math.ceil(0.02 / max(flops / (peak * 1e9), 1e-7))))


def isolated_seconds(op_type, specs, attrs, copies, reps):
    """Median seconds of one ``op_type`` call alone: ``copies`` independent calls per
    tf.function call, divided by ``copies``."""
    import tensorflow as tf
    raw = getattr(tf.raw_ops, op_type)
    names = {"MatMul": ("a", "b"), "BatchMatMulV2": ("x", "y"), "BatchMatMulV3": ("x", "y"),
             "Conv2D": ("input", "filter"),
             "Conv2DBackpropInput": ("input_sizes", "filter", "out_backprop"),
             "Conv2DBackpropFilter": ("input", "filter_sizes", "out_backprop"),
             "DepthwiseConv2dNative": ("input", "filter")}[op_type]
    gen = tf.random.Generator.from_seed(0)
    inputs = []
    for _ in range(copies):
        kw = {}
        for name, spec in zip(names, specs):
            kw[name] = (tf.constant(spec[1], tf.int32) if spec[0] == "const"
                        else tf.cast(gen.normal(spec[1]), spec[2]))
        inputs.append(kw)
    attrs = {k: (tf.dtypes.as_dtype(v) if k == "Tout" else v) for k, v in attrs.items()}
    fn = tf.function(lambda: [raw(**kw, **attrs) for kw in inputs])
    fn(), fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) / copies


def torch_child(path):
    """Runs in a fresh process (``--torch-child FILE``): times each MatMul / BatchMatMul and
    VALID NHWC Conv2D spec of FILE with torch (threads 2 / inter-op 1, float32 or bfloat16 as
    given, inference_mode; the transposes as views, which torch hands to its BLAS as flags; the
    convolutions in NCHW) and writes FILE back as {"jobs": the specs with "torch_s" (seconds
    per call; None for the ops torch does not time), "peak": torch's matmul peak}."""
    torch = fr.pin({"threads": 2, "interop": 1, "framework": "torch"})
    with open(path) as f:
        jobs = json.load(f)
    for job in jobs:
        attrs, op_type = job["attrs"], job["op_type"]
        conv = op_type == "Conv2D" and attrs.get("padding") == "VALID" \
            and attrs.get("data_format") == "NHWC" and attrs.get("dilations") == [1, 1, 1, 1]
        if not (conv or op_type == "MatMul" or op_type.startswith("BatchMatMul")):
            job["torch_s"] = None  # convolution gradients: torch runs them inside autograd
            continue
        (_, sa, da), (_, sb, _) = job["specs"][:2]
        dtype = torch.bfloat16 if da == "bfloat16" else torch.float32
        copies = job["copies"]
        g = torch.Generator().manual_seed(0)
        if conv:  # NCHW input and (out, in, kh, kw) weight, as open_clip's ResNet holds them
            sa = [sa[0], sa[3], sa[1], sa[2]]
            sb = [sb[3], sb[2], sb[0], sb[1]]
        pairs = [(torch.randn(sa, generator=g).to(dtype), torch.randn(sb, generator=g).to(dtype))
                 for _ in range(copies)]
        ta = attrs.get("transpose_a") or attrs.get("adj_x")
        tb = attrs.get("transpose_b") or attrs.get("adj_y")
        stride = attrs.get("strides", [1, 1, 1, 1])[1:3]
        with torch.inference_mode():
            def call():
                if conv:
                    return [torch.nn.functional.conv2d(a, b, stride=stride) for a, b in pairs]
                return [(a.transpose(-1, -2) if ta else a) @ (b.transpose(-1, -2) if tb else b)
                        for a, b in pairs]
            call(), call()
            ts = []
            for _ in range(job["reps"]):
                t0 = time.perf_counter()
                call()
                ts.append(time.perf_counter() - t0)
        job["torch_s"] = statistics.median(ts) / copies
    peak = fr.peak_child({"framework": "torch"})
    with open(path + ".tmp", "w") as f:
        json.dump({"jobs": jobs, "peak": peak}, f)
    os.replace(path + ".tmp", path)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--torch-child":
        return torch_child(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preset")
    p.add_argument("batch_size", type=int)
    p.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16")
    p.add_argument("--inference", action="store_true",
                   help="the towers' forward pass (embed_images, embed_texts) instead of training")
    p.add_argument("--torch", action="store_true",
                   help="also time the same MatMul / BatchMatMul shapes with torch (a child "
                        "process, threads 2 / inter-op 1)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args()
    tf = fr.pin({"threads": 2, "interop": 1, "framework": "tf"})
    from keras_clip.presets import get_preset

    cfg = get_preset(args.preset)
    m, _ = fr.ours_model({"preset": args.preset, "bf16": args.mixed_precision})
    images, ids = (tf.constant(x) for x in fr.synthetic_batch(cfg, args.batch_size))

    @tf.function
    def forward():
        return m.embed_images(images, False), m.embed_texts(ids, False)

    traced = forward if args.inference else fr.towers_forward_backward(m, images, ids)
    found, nested = collect(traced.get_concrete_function().graph)
    precision = "bf16" if args.mixed_precision else "fp32"
    peaks = fr.peak_child({"framework": "tf"})
    peak = peaks[precision]
    counts = collections.Counter(f[0] for f in found)
    first = {f[0]: f for f in found}
    jobs = []
    for key, n in counts.items():
        _, op_type, specs, attrs, flops = first[key]
        copies = copies_for(flops, peak)
        jobs.append(dict(op_type=op_type, specs=specs, attrs=attrs, flops=flops, n=n,
                         copies=copies, reps=args.reps,
                         tf_s=isolated_seconds(op_type, specs, attrs, copies, args.reps)))
    torch_peak = None
    if args.torch:
        import subprocess
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "jobs.json")
            with open(path, "w") as f:
                json.dump(jobs, f)
            subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-child", path],
                           check=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
            with open(path) as f:
                back = json.load(f)
        jobs, torch_peak = back["jobs"], back["peak"][precision]

    def kind_of(op_type):
        return "BatchMatMulV2" if op_type.startswith("BatchMatMul") else op_type

    by_kind = collections.defaultdict(lambda: collections.Counter())
    for j in jobs:
        acc = by_kind[kind_of(j["op_type"])]
        acc["flops"] += j["n"] * j["flops"]
        acc["tf_s"] += j["n"] * j["tf_s"]
        acc["ops"] += j["n"]
        if j.get("torch_s") is not None:
            acc["torch_flops"] += j["n"] * j["flops"]
            acc["torch_s"] += j["n"] * j["torch_s"]
    total_s = sum(v["tf_s"] for v in by_kind.values())
    ops_flops = sum(v["flops"] for v in by_kind.values())
    forward = fr.analytic_flops(cfg) if cfg.get("vision_patch_size") else None
    rated = (sum(forward.values()) * (1 if args.inference else 3) * args.batch_size
             if forward else ops_flops)
    what = "forward (inference)" if args.inference else "forward + backward"
    out = {"preset": args.preset, "batch": args.batch_size, "pass": what,
           "dtype": "mixed_bfloat16" if args.mixed_precision else "float32",
           "peak_gflops": peak, "peak_by_mode": peaks[precision + "_by_mode"],
           "torch_peak_gflops": torch_peak,
           "ops_per_step": len(found), "distinct_ops": len(counts), "nested_calls_skipped": nested,
           "ops_gflop_per_step": ops_flops / 1e9, "rated_gflop_per_step": rated / 1e9,
           "rated_by": "3 x analytic forward" if forward and not args.inference
           else "analytic forward" if forward else "the traced ops' FLOPs",
           "isolated_s_per_step": total_s, "best_share_of_peak": rated / total_s / 1e9 / peak,
           "by_kind": {k: dict(v) for k, v in by_kind.items()}, "ops": jobs}
    print(f"{args.preset} batch {args.batch_size}, {out['dtype']}, {what}, TensorFlow graph, "
          f"intra-op 2 / inter-op 1")
    print(f"matmul peak (2048², same run), GFLOP/s: TensorFlow {peak:.1f} "
          f"{ {k: round(v, 1) for k, v in out['peak_by_mode'].items()} }"
          + (f", torch {torch_peak:.1f}" if torch_peak else ""))
    print(f"{len(found)} matmul/conv ops per step ({len(counts)} distinct shapes), "
          f"{nested} nested function calls not walked\n")
    cols = "| op | ops/step | GFLOP/step | TF alone, s/step | TF GFLOP/s | % of TF peak |"
    print(cols + (" torch alone, s/step | torch GFLOP/s |" if torch_peak else ""))
    print("|---" * (8 if torch_peak else 6) + "|")

    def row(name, v):
        g = v["flops"] / v["tf_s"] / 1e9
        cells = [name, str(v["ops"]), f"{v['flops'] / 1e9:.1f}", f"{v['tf_s']:.3f}", f"{g:.1f}",
                 f"{100 * g / peak:.0f}%"]
        if torch_peak:
            part = "" if v["torch_flops"] >= v["flops"] else \
                f" (the {v['torch_flops'] / 1e9:.1f} GFLOP torch ran)"
            cells += ([f"{v['torch_s']:.3f}{part}", f"{v['torch_flops'] / v['torch_s'] / 1e9:.1f}"]
                      if v["torch_s"] else ["—", "—"])
        print("| " + " | ".join(cells) + " |")

    for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]["tf_s"]):
        row(k, v)
    row("all", sum(by_kind.values(), collections.Counter()))
    print(f"\nstep rated at {rated / 1e9:.1f} GFLOP ({out['rated_by']}); made of only these ops "
          f"at their isolated speed it would take {total_s:.3f} s: "
          f"{100 * out['best_share_of_peak']:.0f}% of TensorFlow's peak\n")
    print("| slowest shapes | ops/step | op | input shapes | attrs | TF GFLOP/s |"
          + (" torch GFLOP/s |" if torch_peak else ""))
    print("|---" * (7 if torch_peak else 6) + "|")
    for j in sorted(jobs, key=lambda j: -j["n"] * j["tf_s"])[:12]:
        a = {k: v for k, v in j["attrs"].items() if v not in (False, [1, 1, 1, 1], [], "NHWC")}
        shapes = [sp[1] for sp in j["specs"]]
        line = (f"| {j['n'] * j['tf_s']:.3f} s | {j['n']} | {j['op_type']} | {shapes} | "
                f"{a or ''} | {j['flops'] / j['tf_s'] / 1e9:.0f} |")
        if torch_peak:
            line += (f" {j['flops'] / j['torch_s'] / 1e9:.0f} |" if j.get("torch_s") else " — |")
        print(line)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(out, f, indent=1, default=str)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
