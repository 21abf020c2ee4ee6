"""benchmarks/clip_matmul_ceiling.py finds a training step's matmuls and convolutions, forward
and backward, with their static shapes, and counts their FLOPs exactly."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import clip_matmul_ceiling as ceiling  # noqa: E402


def _traced_step():
    x = tf.random.normal((2, 5, 8), seed=0)
    images = tf.random.normal((2, 9, 9, 3), seed=1)
    kernel = tf.Variable(tf.random.normal((8, 6), seed=2))
    filters = tf.Variable(tf.random.normal((3, 3, 3, 4), seed=3))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            y = tf.tensordot(x, kernel, axes=1)  # (2, 5, 6): a 2-D MatMul inside
            z = tf.nn.conv2d(images, filters, strides=2, padding="VALID")  # (2, 4, 4, 4)
            loss = tf.reduce_sum(y ** 2) + tf.reduce_sum(z ** 2)
        return tape.gradient(loss, [kernel, filters])

    return step.get_concrete_function().graph


def test_collect_finds_forward_and_gradient_ops_with_exact_flops():
    found, _ = ceiling.collect(_traced_step())
    by_type = {}
    for _, op_type, specs, attrs, flops in found:
        by_type.setdefault(op_type, []).append((specs, attrs, flops))
    # forward MatMul (10, 8) @ (8, 6) and the kernel's gradient (10, 8)^T @ (10, 6): 2·10·8·6 each
    assert sorted(f for _, _, f in by_type["MatMul"]) == [960, 960]
    assert any(a.get("transpose_a") for _, a, _ in by_type["MatMul"])
    # the convolution: 2·(2·4·4·4 outputs)·(3·3·3) multiply-adds, forward and filter gradient
    assert [f for _, _, f in by_type["Conv2D"]] == [2 * 2 * 4 * 4 * 4 * 27]
    (specs, attrs, flops), = by_type["Conv2DBackpropFilter"]
    assert flops == 2 * 2 * 4 * 4 * 4 * 27
    assert specs[1] == ("const", [3, 3, 3, 4])  # filter_sizes read from the op's output shape
    assert attrs["strides"] == [1, 2, 2, 1] and attrs["padding"] == "VALID"
    assert "Conv2DBackpropInput" not in by_type  # no gradient asked for the images


def test_isolated_op_runs_the_recorded_op():
    found, _ = ceiling.collect(_traced_step())
    for _, op_type, specs, attrs, flops in found:
        seconds = ceiling.isolated_seconds(op_type, specs, attrs, copies=2, reps=2)
        assert np.isfinite(seconds) and seconds > 0


def test_dynamic_shapes_are_refused_by_name():
    @tf.function(input_signature=[tf.TensorSpec((None, 8))])
    def f(x):
        return tf.matmul(x, tf.ones((8, 3)))

    with pytest.raises(ValueError, match="dynamic shape"):
        ceiling.collect(f.get_concrete_function().graph)
