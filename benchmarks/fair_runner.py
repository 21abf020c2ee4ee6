"""Shared machinery of the fair CLIP benchmarks (`clip_train.py`, `clip_infer.py`, issue 18):
arguments, fresh-subprocess children with pinned thread pools, interleaved repetitions with a
rotating row order, each framework's matmul peak, FLOPs counted on open_clip's model, both sides'
models and synthetic batch, and the markdown / JSON output. Not a benchmark itself.

Children: every measurement runs in a fresh process (`<--python> <script> --child JSON`) that
imports exactly one framework (TensorFlow or torch, never both), pins its thread pools first
(TensorFlow intra-op ``--threads`` / inter-op ``--interop``; torch ``set_num_threads`` /
``set_num_interop_threads`` alike) and gets ``OMP_NUM_THREADS=--threads``; any other variable
(e.g. ``OMP_WAIT_POLICY``) is inherited unchanged by every child. A child prints one JSON dict
as its last line; a failed child's stderr tail is printed and its cell marked failed.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BOS, EOS = 49406, 49407  # CLIP's start / end of text ids
LR = 1e-5  # small: nothing diverges in the few steps timed
PEAK_N, PEAK_CALLS = 2048, 10  # the matmul peak: N×N @ N×N, median of PEAK_CALLS calls
BASELINE = "torch-eager"  # the rows' "× open_clip eager" reference


# --- arguments --------------------------------------------------------------------------------
def parse(doc, rows, batch_sizes, steps, warmup):
    """The benchmarks' shared command line; ``rows`` maps row keys to row dicts."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["ViT-B-32", "RN50"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=batch_sizes)
    p.add_argument("--rows", nargs="+", default=list(rows), choices=list(rows),
                   help="rows to run (default: all)")
    p.add_argument("--reps", type=int, default=5, help="repetitions (fresh processes per row)")
    p.add_argument("--steps", type=int, default=steps, help="timed steps / calls per process")
    p.add_argument("--warmup", type=int, default=warmup,
                   help="untimed steps / calls after the first (timed) one")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, both frameworks")
    p.add_argument("--interop", type=int, default=1, help="inter-op threads, both frameworks")
    p.add_argument("--python", default=sys.executable, help="interpreter of every child")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child")
    p.add_argument("--output", default="", help="JSON file of every raw measurement")
    p.add_argument("--report-from", default="", metavar="JSON",
                   help="print the report of an earlier run's --output file; run nothing")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


# --- in a child -------------------------------------------------------------------------------
def pin(c):
    """Imports the child's one framework and pins its thread pools; returns the module."""
    if c["framework"] == "tf":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        sys.path.insert(0, ROOT)
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(c["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(c["interop"])
        return tf
    import torch
    torch.set_num_threads(c["threads"])
    torch.set_num_interop_threads(c["interop"])
    return torch


def versions(*names):
    """{"package": version} of the imported ``names``."""
    return {n: sys.modules[n].__version__ for n in names if n in sys.modules}


def synthetic_batch(cfg, b, nchw=False):
    """The same random batch on both sides: float32 images (b, S, S, 3) (NCHW with ``nchw``)
    and int token ids (b, context_length): BOS, 12 random tokens, EOS, then zeros."""
    import numpy as np
    rng = np.random.default_rng(0)
    s = cfg["image_size"]
    images = rng.standard_normal((b, s, s, 3)).astype(np.float32)
    ids = np.zeros((b, cfg["context_length"]), np.int64)
    n = min(12, cfg["context_length"] - 2)
    ids[:, 0], ids[:, n + 1] = BOS, EOS
    ids[:, 1:n + 1] = rng.integers(1, 49000, (b, n))
    if nchw:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), ids
    return images, ids.astype(np.int32)


def ours_model(c):
    """Our CLIP of ``c["preset"]``, random init (seed 0); with ``c["bf16"]`` under the
    mixed_bfloat16 policy, set before the model is built as keras_clip/train.py's
    ``--mixed-precision`` does. Returns (model, keras)."""
    import keras
    from keras_clip.model import CLIP
    if c.get("bf16"):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    return CLIP.from_preset(c["preset"]), keras


def towers_forward_backward(model, images, ids):
    """A tf.function: our train step's forward + backward (both towers as `train_step` runs
    them, the loss, the gradients of every trainable variable), without the optimizer;
    `clip_step_breakdown.py` times it, `clip_matmul_ceiling.py` traces it."""
    import tensorflow as tf
    from keras_clip.model import _tf_variables
    variables = _tf_variables(model.trainable_weights)

    @tf.function
    def forward_backward():
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            img, txt = model._towers(images, ids, True, tape)
            loss = model._loss(img, txt)
        return tape.gradient(loss, variables)

    return forward_backward


def open_clip_model(cfg):
    """open_clip 3.3.0's CLIP with our preset config ``cfg`` (QuickGELU when our activation is
    quick_gelu, as every preset's: OpenAI's form), random init (seed 0), float32."""
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    if cfg.get("activation", "quick_gelu") not in ("quick_gelu", "gelu"):
        raise ValueError(f"no open_clip activation for {cfg['activation']!r}")
    torch.manual_seed(0)
    w, heads = cfg["vision_width"], cfg["vision_heads"]
    resnet = cfg["vision_patch_size"] is None
    # open_clip derives the heads: ResNet width·32 / head_width, ViT width / head_width
    vision = CLIPVisionCfg(
        layers=tuple(cfg["vision_layers"]) if resnet else cfg["vision_layers"], width=w,
        head_width=w * 32 // heads if resnet else w // heads, image_size=cfg["image_size"],
        patch_size=cfg["vision_patch_size"] or 16, mlp_ratio=cfg.get("mlp_ratio", 4.0))
    text = CLIPTextCfg(context_length=cfg["context_length"], vocab_size=cfg["vocab_size"],
                       width=cfg["text_width"], heads=cfg["text_heads"],
                       layers=cfg["text_layers"], mlp_ratio=cfg.get("mlp_ratio", 4.0))
    return CLIP(cfg["embed_dim"], vision, text,
                quick_gelu=cfg.get("activation", "quick_gelu") == "quick_gelu")


def time_steps(step, warmup, steps, sync=lambda r: r):
    """``step()`` once (timed: the first step / call), ``warmup`` times untimed, then ``steps``
    times timed: {"first_s", "timed_s" (all ``steps``), "n": steps} and the last result."""
    t0 = time.perf_counter()
    sync(step())
    first = time.perf_counter() - t0
    for _ in range(warmup):
        sync(step())
    t0 = time.perf_counter()
    results = [sync(step()) for _ in range(steps)]
    return dict(first_s=first, timed_s=time.perf_counter() - t0, n=steps), results


def fit_timed(model, data, warmup, steps):
    """``model.fit`` once over 1 + ``warmup`` + ``steps`` steps, timed per step by a callback:
    {"first_s": fit's start to the first step's end (tracing and XLA compilation included),
    "timed_s": the last ``steps`` steps, "n": steps} and the per-step losses of those steps.
    One fit, not one per phase: a fit that ends sometimes waits ~6 s more before it returns
    (measured at ViT-B/32: fit of 3 steps 20.48 s, its steps 13.6 s), a stall a user's one long
    fit meets once; timing separate fits counted it as step time."""
    import keras
    ends, means = [], []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())
            means.append(float(logs["loss"]))  # the epoch's running mean so far

    t0 = time.perf_counter()
    model.fit(data, steps_per_epoch=1 + warmup + steps, epochs=1, verbose=0, callbacks=[Clock()])
    losses = [(k + 1) * m - k * p for k, (m, p) in enumerate(zip(means, [0.0] + means))]
    return (dict(first_s=ends[0] - t0, timed_s=ends[-1] - ends[-steps - 1], n=steps),
            losses[-steps:])


def describe_child(c):
    """(TensorFlow) the preset's config, our parameter count and clip_optimizer's AdamW
    hyperparameters for this tower."""
    from keras_clip.optimizer import clip_optimizer
    model, _ = ours_model(c)
    opt = clip_optimizer(model, total_steps=10)
    config = model.get_config()
    keep = ("embed_dim", "image_size", "vision_layers", "vision_width", "vision_patch_size",
            "vision_heads", "context_length", "vocab_size", "text_width", "text_heads",
            "text_layers", "activation", "mlp_ratio")
    return dict(config={k: config[k] for k in keep}, params=model.count_params(),
                adamw=dict(betas=[opt.beta_1, opt.beta_2], eps=opt.epsilon,
                           weight_decay=opt.weight_decay),
                versions=versions("tensorflow", "keras"))


def flops_child(c):
    """(torch) forward FLOPs per sample of each tower of open_clip's model of the same
    architecture (torch.utils.flop_counter; CPU SDPA attention counted as SDPA), its params."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
    model = open_clip_model(c["config"]).eval()
    images, ids = synthetic_batch(c["config"], 1, nchw=True)
    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:  # q, k, v shapes
                lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}
    out = {}
    for tower, call in (("image", lambda: model.encode_image(torch.from_numpy(images))),
                        ("text", lambda: model.encode_text(torch.from_numpy(ids)))):
        with FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
            call()
        out[tower] = counter.get_total_flops()
    import open_clip
    return dict(flops=out, method="torch.utils.flop_counter.FlopCounterMode on open_clip",
                params=sum(p.numel() for p in model.parameters()),
                versions=dict(versions("torch"), open_clip=open_clip.__version__))


def peak_child(c):
    """The framework's matmul peak (PEAK_N² @ PEAK_N²): GFLOP/s of the median of PEAK_CALLS
    calls after 2 warm-up calls (TensorFlow: the faster of a tf.function and an XLA-compiled
    one, both given), for each of ``c["precisions"]`` ("fp32", "bf16"; default both). A run
    without bf16 rows leaves bf16 out: on a CPU without bf16 instructions one bf16 call takes
    about a minute (torch 2.14, AMD EPYC with AVX2 only: 0.3 GFLOP/s)."""
    precisions = c.get("precisions", ("fp32", "bf16"))
    def gflops(call):
        call(), call()
        ts = []
        for _ in range(PEAK_CALLS):
            t0 = time.perf_counter()
            call()  # both frameworks' eager CPU calls return when the matmul is done
            ts.append(time.perf_counter() - t0)
        return 2 * PEAK_N ** 3 / statistics.median(ts) / 1e9

    out = {}
    if c["framework"] == "tf":
        import tensorflow as tf
        a = tf.random.normal((PEAK_N, PEAK_N), seed=0)
        for name, dtype in (("fp32", tf.float32), ("bf16", tf.bfloat16)):
            if name not in precisions:
                continue
            x = tf.cast(a, dtype)
            modes = {mode: gflops(tf.function(lambda: tf.matmul(x, x), jit_compile=mode == "xla"))
                     for mode in ("graph", "xla")}
            out[name], out[name + "_by_mode"] = max(modes.values()), modes
        return dict(out, versions=versions("tensorflow"))
    import torch
    a = torch.randn(PEAK_N, PEAK_N, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if name not in precisions:
                continue
            x = a.to(dtype)
            out[name] = gflops(lambda: torch.mm(x, x))
    return dict(out, versions=versions("torch"))


def child_main(c, children):
    """A child's body: pin the threads, run, print the result dict as the last line."""
    pin(c)
    own = dict(describe=describe_child, flops=flops_child, peak=peak_child)
    fn = own.get(c["child"]) or children[c["framework"]]
    print(json.dumps(fn(c)))


# --- the parent ---------------------------------------------------------------------------------
def run_child(args, script, c):
    """Runs ``script --child c`` with ``args.python``; returns its dict plus "load" (1-min load
    average before, after), or {"error", "load"}. torch.compile children get a fresh, empty
    inductor cache (a cold compile, as a user's first run; XLA keeps no on-disk cache)."""
    c = dict(c, threads=args.threads, interop=args.interop)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TF_CPP_MIN_LOG_LEVEL="3")
    cache = tempfile.mkdtemp(prefix="inductor_") if c.get("compile") else None
    if cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    load = os.getloadavg()[0]
    try:
        p = subprocess.run([args.python, os.path.abspath(script), "--child", json.dumps(c)],
                           capture_output=True, text=True, env=env, timeout=args.timeout)
        ok, err = p.returncode == 0, p.stderr
    except subprocess.TimeoutExpired as e:
        ok, err = False, f"{e.stderr or ''}\ntimeout after {args.timeout:.0f} s"
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    loads = [load, os.getloadavg()[0]]
    if ok:
        return dict(json.loads(p.stdout.strip().splitlines()[-1]), load=loads)
    tail = [line for line in str(err).strip().splitlines() if line.strip()] or ["(no stderr)"]
    print(f"  child {c['child']} {c.get('row', '')} failed:\n    " + "\n    ".join(tail[-12:]),
          file=sys.stderr, flush=True)
    return dict(error=tail[-1][:300], load=loads)


def analytic_flops(cfg):
    """Forward FLOPs per sample of each tower by formula (ViT towers only; 2 × multiply-adds of
    the matmuls, attention included) — the fallback when torch is missing."""
    def transformer(tokens, width, layers, mlp=4):
        return layers * (tokens * (4 + 2 * mlp) * width * width + 2 * tokens * tokens * width)
    p, tw, w, d = (cfg[k] for k in ("vision_patch_size", "text_width", "vision_width", "embed_dim"))
    text = transformer(cfg["context_length"], tw, cfg["text_layers"]) + tw * d
    if p is None:
        return dict(image=None, text=2 * text)
    grid = (cfg["image_size"] // p) ** 2  # patches; + the class token below
    image = grid * 3 * p * p * w + transformer(grid + 1, w, cfg["vision_layers"]) + w * d
    return dict(image=2 * image, text=2 * text)


def run(args, script, rows):
    """Every child of the benchmark: per preset a description (TensorFlow) and a FLOP count
    (torch); then ``args.reps`` repetitions, each measuring both peaks and, per preset and batch
    size, every row in a fresh process, the row order rotated by one each repetition.
    Returns the raw data (what --output holds)."""
    data = dict(command=command_line(), machine=machine(), args=vars(args), presets={},
                peaks=[], cells=[])
    keys = list(args.rows)
    precisions = ["fp32"] + (["bf16"] if any(rows[k].get("bf16") for k in keys) else [])
    for preset in args.presets:
        d = run_child(args, script, dict(child="describe", framework="tf", preset=preset))
        if "error" in d:
            data["presets"][preset] = d
            continue
        f = run_child(args, script, dict(child="flops", framework="torch", config=d["config"]))
        if "error" in f:
            f = dict(flops=analytic_flops(d["config"]), error=f["error"],
                     method="analytic ViT formula (torch missing or failed in --python: "
                            f"{f['error']})")
        data["presets"][preset] = dict(d, open_clip=f)
        print(f"{preset}: params ours {d['params']:,}, open_clip {f.get('params', '?')}; "
              f"forward FLOPs/sample {f['flops']} ({f['method']})", file=sys.stderr, flush=True)
    for rep in range(args.reps):
        for fw in (("tf", "torch") if rep % 2 == 0 else ("torch", "tf")):
            r = run_child(args, script, dict(child="peak", framework=fw, precisions=precisions))
            data["peaks"].append(dict(rep=rep, framework=fw, result=r))
            print(f"rep {rep + 1}/{args.reps} peak {fw}: {short(r)}", file=sys.stderr, flush=True)
        for preset, d in data["presets"].items():
            if "error" in d:
                continue
            for b in args.batch_sizes:
                k = rep % len(keys)
                for key in keys[k:] + keys[:k]:
                    row = rows[key]
                    if row.get("vit_only") and d["config"]["vision_patch_size"] is None:
                        r = dict(na=row["vit_only"])
                    else:
                        r = run_child(args, script, dict(
                            row, child="row", row=key, preset=preset, config=d["config"],
                            adamw=d["adamw"], batch=b, steps=args.steps, warmup=args.warmup))
                    data["cells"].append(dict(rep=rep, preset=preset, batch=b, row=key, result=r))
                    print(f"rep {rep + 1}/{args.reps} {preset} b={b} {key}: {short(r)}",
                          file=sys.stderr, flush=True)
    return data


def short(r):
    """A child's result in one progress line."""
    if "error" in r or "na" in r:
        return r.get("error") or r["na"]
    return ", ".join(f"{k} {v:.4g}" for k, v in r.items() if k not in ("versions", "load") and
                     isinstance(v, (int, float))) + "".join(
        f"; {k}: first {v['first_s']:.2f} s, {v['timed_s'] / max(v['n'], 1):.3f} s/step"
        for k, v in r.items() if isinstance(v, dict) and "first_s" in v)


# --- the report ---------------------------------------------------------------------------------
def command_line():
    py = sys.executable
    return " ".join([os.path.relpath(py, ROOT) if py.startswith(ROOT) else py,
                     os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] + sys.argv[1:])


def machine():
    """CPU model, logical CPUs, bf16 instructions, memory."""
    info = {"cpus": os.cpu_count()}
    try:
        text = open("/proc/cpuinfo").read()
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in text.splitlines()
                           if l.startswith("model name"))
        flags = set(next(l for l in text.splitlines() if l.startswith("flags")).split())
        info["bf16_instructions"] = sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
        info["memory_gb"] = round(int(open("/proc/meminfo").readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return info


def fmt(values, digits=1):
    """"median (min–max)", or "–"."""
    if not values:
        return "–"
    m = statistics.median(values)
    return f"{m:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def peaks_by_rep(data, framework):
    """{repetition: the peak child's result} of ``framework``, repetitions whose peak ran."""
    return {p["rep"]: p["result"] for p in data["peaks"]
            if p["framework"] == framework and "error" not in p["result"]}


def peaks(data):
    """{framework: {precision: median GFLOP/s over repetitions}}."""
    out = {}
    for fw in ("tf", "torch"):
        ok = list(peaks_by_rep(data, fw).values())
        out[fw] = {prec: statistics.median([r[prec] for r in ok if prec in r])
                   if any(prec in r for r in ok) else None for prec in ("fp32", "bf16")}
    return out


def header(title, data):
    """The report's opening: command, machine, threads, versions, peaks, presets' FLOPs."""
    a, m, pk = data["args"], data["machine"], peaks(data)
    results = [c["result"] for c in data["cells"]] + [p["result"] for p in data["peaks"]] + \
        [d for d in data["presets"].values()] + \
        [d.get("open_clip", {}) for d in data["presets"].values()]
    vers = {}
    for r in results:
        vers.update(r.get("versions", {}))
    loads = [x for r in results for x in r.get("load", [])]
    lines = [
        f"# {title}", "", "Command (from the repository root):", "", f"    {data['command']}", "",
        f"Machine: {m.get('cpu', '?')}, {m['cpus']} logical CPUs, {m.get('memory_gb', '?')} GB; "
        f"bf16 instructions: {', '.join(m.get('bf16_instructions', [])) or 'none'}. "
        f"Interpreter of every child: {a['python']}.",
        f"Threads in every child: intra-op {a['threads']}, inter-op {a['interop']} (TensorFlow "
        "tf.config.threading, torch set_num_threads / set_num_interop_threads), "
        f"OMP_NUM_THREADS={a['threads']}; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in sorted(vers.items()))}.",
        f"{a['reps']} repetitions; each repetition of each row is a fresh process; within a "
        "repetition the rows run one after another, the order rotated by one row per "
        "repetition. Cells: median (min–max) over repetitions."
        + (f" Load average (1 min) at the children's starts and ends: {min(loads):.1f}–"
           f"{max(loads):.1f}." if loads else ""),
        "",
        f"Matmul peak ({PEAK_N}² @ {PEAK_N}², median of {PEAK_CALLS} calls, median over "
        "repetitions), GFLOP/s: " + "; ".join(
            f"{name} fp32 {_num(pk[fw]['fp32'])}, bf16 {_num(pk[fw]['bf16'])}"
            for fw, name in (("tf", "TensorFlow (faster of graph / XLA)"), ("torch", "torch"))),
        "",
        "| preset | params ours / open_clip | forward GFLOP/sample, image / text | counted by |",
        "|---|---|---|---|"]
    for preset, d in data["presets"].items():
        if "error" in d:
            lines.append(f"| {preset} | failed: {d['error']} | | |")
            continue
        f = d["open_clip"]["flops"]
        theirs = d["open_clip"].get("params")
        lines.append(f"| {preset} | {d['params']:,} / {f'{theirs:,}' if theirs else '?'} | "
                     f"{_num(f['image'], 1e9, 2)} / {_num(f['text'], 1e9, 2)} | "
                     f"{d['open_clip']['method']} |")
    return lines + [""]


def _num(x, scale=1.0, digits=1):
    return "n/a" if x is None else f"{x / scale:.{digits}f}"


def cells(data, preset, b, row):
    """The child records (``rep``, ``result``, …) of one row at one preset and batch size."""
    return [c for c in data["cells"] if (c["preset"], c["batch"], c["row"]) == (preset, b, row)]


def items_per_s(result, measure, b):
    """A child's items/s over the timed steps (calls) of ``measure``; batch size ``b``."""
    return result[measure]["n"] * b / result[measure]["timed_s"]


def rates(data, preset, b, row, measure):
    """Per repetition of a cell: items/s over the timed steps of ``measure`` and the first
    step's seconds; the results that have them; the others' error or "n/a" reason."""
    results = [c["result"] for c in cells(data, preset, b, row)]
    ok = [r for r in results if measure in r]
    return ([items_per_s(r, measure, b) for r in ok],
            [r[measure]["first_s"] for r in ok], ok,
            [f"n/a: {r['na']}" if "na" in r else f"failed: {r.get('error')}"
             for r in results if measure not in r])


def speed_table(data, rows, preset, b, measure, flops_per_item, unit, first_name, extra=()):
    """One markdown table: per row items/s, first step / call, × open_clip eager, GFLOP/s and %
    of the row's own framework's matmul peak at its precision (n/a for a row marked
    ``less_work``, which skips part of the counted work); ``extra`` adds (title, fn(the
    cell's results) → text) columns."""
    pk = peaks(data)
    base = rates(data, preset, b, BASELINE, measure)[0]
    lines = [f"| row | {unit}/s | {first_name}, s | × open_clip eager | GFLOP/s | % of own peak |"
             + "".join(f" {t} |" for t, _ in extra),
             "|---|---|---|---|---|---|" + "---|" * len(extra)]
    for key in data["args"]["rows"]:
        row = rows[key]
        rs, firsts, ok, bad = rates(data, preset, b, key, measure)
        if not rs:
            lines.append(f"| {row['label']} | {bad[0] if bad else '–'} |" + " |" * (4 + len(extra)))
            continue
        med = statistics.median(rs)
        ratio = f"{med / statistics.median(base):.2f}" if base else "–"
        peak = pk[row["framework"]]["bf16" if row.get("bf16") else "fp32"]
        gf = med * flops_per_item / 1e9 if flops_per_item and not row.get("less_work") else None
        share = f"{100 * gf / peak:.0f}%" if gf and peak else "n/a"
        note = f" ({len(bad)} failed)" if bad else ""
        lines.append(f"| {row['label']}{note} | {fmt(rs)} | {fmt(firsts, 2)} | {ratio} | "
                     f"{_num(gf)} | {share} |" + "".join(f" {fn(ok)} |" for _, fn in extra))
    return lines


def paired_table(data, rows, preset, b, measure, pairs, flops_per_item=None):
    """Ratios taken within each repetition, where the two rows ran minutes apart in the same
    conditions (robust when the host's speed drifts between repetitions, which moves medians of
    separate rows): per pair (row, against) the median (min–max) over repetitions of row's
    items/s ÷ against's; with ``flops_per_item`` also each row's GFLOP/s as a % of the matmul
    peak its framework measured in the same repetition."""
    def by_rep(row):
        return {c["rep"]: items_per_s(c["result"], measure, b)
                for c in cells(data, preset, b, row) if measure in c["result"]}
    lines = ["| row | against | ratio, per repetition |", "|---|---|---|"]
    for row, against in pairs:
        mine, theirs = by_rep(row), by_rep(against)
        ratios = [mine[r] / theirs[r] for r in sorted(mine) if r in theirs]
        if ratios:
            lines.append(f"| {rows[row]['label']} | {rows[against]['label']} | "
                         f"{fmt(ratios, 2)} |")
    if not flops_per_item:
        return lines
    lines += ["", "| row | % of the same repetition's matmul peak |", "|---|---|"]
    for key in data["args"]["rows"]:
        row, rate = rows[key], by_rep(key)
        if row.get("less_work"):  # skips work the FLOP count includes: no honest share
            continue
        prec = "bf16" if row.get("bf16") else "fp32"
        peak = {rep: r[prec] for rep, r in peaks_by_rep(data, row["framework"]).items()}
        shares = [100 * rate[r] * flops_per_item / 1e9 / peak[r] for r in sorted(rate) if r in peak]
        if shares:
            lines.append(f"| {row['label']} | {fmt(shares, 0)}% |")
    return lines


def finish(data, text, output):
    """Prints the report; writes the raw data to ``output`` (JSON) if given."""
    print(text)
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            json.dump(dict(data, report=text), f, indent=1)


def main(script, doc, rows, children, report, **defaults):
    """A benchmark's entry point: a child runs ``children[framework](config)``; the parent runs
    every child (`run`) and prints ``report(data, rows)``."""
    args = parse(doc, rows, **defaults)
    if args.child:
        return child_main(json.loads(args.child), children)
    if args.report_from:
        with open(args.report_from) as f:
            data = json.load(f)
        print(report(data, rows))
        return
    t0 = time.perf_counter()
    data = run(args, script, rows)
    data["wall_s"] = time.perf_counter() - t0
    finish(data, report(data, rows), args.output)
