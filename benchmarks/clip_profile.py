"""TensorFlow's profiler around CLIP training steps, summarised as a table of TensorFlow ops by
self time (issue 18's "profile first"; beside `clip_step_breakdown.py`, which times phases).

The model, optimizer and synthetic batch are `clip_train.py`'s "ours" rows (TensorFlow intra-op
threads 2, inter-op 1); ``--warmup`` `train_on_batch` steps run first (tracing, compilation),
then ``--steps`` steps run under ``tf.profiler.experimental``; the trace is read with xprof's
``framework_op_stats`` tool (``pip install xprof``; in the reference venv) and printed as the
op types and the single ops with the most self time, per step, with the wall time of the
profiled steps, then a second table from the same trace read with ``trace_viewer`` (every
op on TensorFlow's compute thread and every XLA kernel on the Eigen threads: the fused
activations, the optimizer's update, the towers with ``--xla-towers``), which framework_op_stats
only partly attributes.

    .venv-ref/bin/python benchmarks/clip_profile.py ViT-B-32 16 --mixed-precision
    .venv-ref/bin/python benchmarks/clip_profile.py RN50 16 --xla-towers --logdir /tmp/prof

Prints text; ``--json`` also writes the summary to a file.
"""
import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fair_runner as fr  # noqa: E402


def op_stats(logdir):
    """framework_op_stats of the newest trace under ``logdir``: a list of dicts with "type",
    "operation", "occurrences", "self_time_us" (total over the profiled steps), host ops only."""
    from xprof.convert import raw_to_tool_data
    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {logdir}/plugins/profile")
    data, _ = raw_to_tool_data.xspace_to_tool_data([paths[-1]], "framework_op_stats", {})
    tables = json.loads(data)
    table = tables[0] if isinstance(tables, list) else tables  # the first table: all ops
    names = [c["id"] for c in table["cols"]]
    rows = []
    for r in table["rows"]:
        row = dict(zip(names, (cell.get("v") for cell in r["c"])))
        if row.get("host_or_device", "Host") != "Host":
            continue
        rows.append(dict(type=row.get("type"), operation=row.get("operation"),
                         occurrences=int(row.get("occurrences") or 0),
                         self_time_us=float(row.get("total_self_time") or 0.0)))
    return rows


# Events of the trace that wrap others (executor regions, XLA launches and waits): left out of
# trace_times so that nothing is counted twice.
_WRAPPERS = {"Region", "Process", "Start", "ExecuteAsyncOnStream", "BlockUntilReady", "Execute",
             "Done", "Run"}


def trace_times(logdir):
    """Totals per op name from xprof's ``trace_viewer`` tool: the complete events on
    TensorFlow's compute threads (``tf_Compute``: the graph's ops, one at a time with inter-op
    1; small XLA kernels run there too) and on the Eigen pool's threads (``tf_numa…Eigen``: XLA's
    kernels), XLA fusions' ".N" suffixes dropped, wrappers left out. framework_op_stats
    attributes only part of a step on this TensorFlow (ops inside XLA launches and several
    element-wise ops are missing); the trace has them. Returns {("compute thread" |
    "Eigen pool", name): [microseconds, count]}."""
    import re

    from xprof.convert import raw_to_tool_data
    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    data, _ = raw_to_tool_data.xspace_to_tool_data([paths[-1]], "trace_viewer", {})
    events = json.loads(data.decode() if isinstance(data, bytes) else data)["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    acc = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        thread = threads.get((e.get("pid"), e.get("tid")), "")
        group = ("compute thread" if thread.startswith("tf_Compute")
                 else "Eigen pool" if "Eigen" in thread else None)
        if e.get("ph") != "X" or group is None:
            continue
        name = e["name"].split(":")[-1]
        if name in _WRAPPERS:
            continue
        name = re.sub(r"\.\d+$", "", name)  # XLA's fusions, wherever they run
        acc[(group, name)][0] += e.get("dur", 0)
        acc[(group, name)][1] += 1
    return acc


def summarise(rows, steps, top):
    """(by type, by op) lists of (name, ms per step, share, occurrences per step)."""
    total = sum(r["self_time_us"] for r in rows) or 1.0

    def ranked(key):
        acc = collections.defaultdict(lambda: [0.0, 0])
        for r in rows:
            acc[r[key]][0] += r["self_time_us"]
            acc[r[key]][1] += r["occurrences"]
        items = sorted(acc.items(), key=lambda kv: -kv[1][0])[:top]
        return [(k, v[0] / 1e3 / steps, v[0] / total, v[1] / steps) for k, v in items]
    return ranked("type"), ranked("operation"), total / 1e3 / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preset")
    p.add_argument("batch_size", type=int)
    p.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16")
    p.add_argument("--xla-towers", action="store_true")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--logdir", help="where the trace goes (default: a temporary folder)")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args()
    from keras_clip.presets import get_preset
    c = dict(framework="tf", threads=2, interop=1, preset=args.preset, bf16=args.mixed_precision,
             config=get_preset(args.preset), batch=args.batch_size)
    tf = fr.pin(c)
    from keras_clip.optimizer import clip_optimizer
    model, _ = fr.ours_model(c)
    model.compile(optimizer=clip_optimizer(model, total_steps=100, learning_rate=fr.LR,
                                           warmup_steps=0),
                  xla_towers=args.xla_towers, text_padding="max_length",  # open_clip's work
                  jit_compile=False)
    images, ids = fr.synthetic_batch(c["config"], c["batch"])
    batch = {"images": tf.constant(images), "token_ids": tf.constant(ids)}
    for _ in range(args.warmup):
        model.train_on_batch(batch)
    logdir = args.logdir or tempfile.mkdtemp(prefix="clip_profile_")
    tf.profiler.experimental.start(logdir)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(batch)
    wall = (time.perf_counter() - t0) / args.steps
    tf.profiler.experimental.stop()
    by_type, by_op, total_ms = summarise(op_stats(logdir), args.steps, args.top)
    title = (f"{args.preset} batch {args.batch_size}, "
             f"{'mixed_bfloat16' if args.mixed_precision else 'float32'}, XLA towers "
             f"{'on' if args.xla_towers else 'off'}: {wall:.3f} s per profiled step (wall), "
             f"{total_ms:.0f} ms of TensorFlow op self time per step; trace in {logdir}")
    print(title)
    for heading, ranked in (("op type", by_type), ("op", by_op)):
        print(f"\n| {heading} | ms/step | share | calls/step |\n|---|---|---|---|")
        for name, ms, share, n in ranked:
            print(f"| {name} | {ms:.1f} | {100 * share:.1f}% | {n:g} |")
    trace = sorted(trace_times(logdir).items(), key=lambda kv: -kv[1][0])
    print(f"\nFrom the trace (trace_viewer), per step: TensorFlow's compute thread (the graph's "
          f"ops and small XLA kernels) and the Eigen pool (larger XLA kernels, on two threads, "
          f"so their times add up to as much as 2× their wall time):\n")
    print("| where | op | ms/step | calls/step |\n|---|---|---|---|")
    for (group, name), (us, n) in trace[:args.top]:
        print(f"| {group} | {name} | {us / 1e3 / args.steps:.1f} | {n / args.steps:g} |")
    for group in ("compute thread", "Eigen pool"):
        total = sum(v[0] for (g, _), v in trace if g == group) / 1e3 / args.steps
        print(f"| {group} | all | {total:.1f} | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(title=title, wall_s=wall, op_ms=total_ms, by_type=by_type,
                           by_op=by_op, trace=[[g, n, us / args.steps, c / args.steps]
                                               for (g, n), (us, c) in trace]), f, indent=1)


if __name__ == "__main__":
    main()
