"""Every use of a private Keras or TensorFlow hook in this project, each with the reason.

Checked against keras 3.15.1, tensorflow 2.21.0 and tensorflow-text 2.21.0. Nothing else in
keras_clip, keras_dalle or export overrides a private method or reads a private attribute of
Keras or TensorFlow; a test (tests/test_imports.py) keeps it so.
"""

import tensorflow as tf


class BuiltInInitModel:
    """Mixin for models built in ``__init__`` whose loss lives in ``train_step`` (CLIP, DALLE).

    Overrides ``keras.Model._maybe_symbolic_build`` (keras/src/trainers/trainer.py), which
    ``fit``/``evaluate`` call before the first step. Keras' version builds an unbuilt model by
    running a first batch through ``compute_loss`` and reducing it over the replicas with
    ``strategy.reduce`` of a dict, which MultiWorkerMirroredStrategy rejects; these models are
    already built, so only the optimizer's slots are created (under the model's strategy).
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        build_optimizer_slots(self)


def build_optimizer_slots(model):
    """Creates ``model.optimizer``'s slot variables for ``model.trainable_variables`` under the
    model's distribution strategy (a no-op once built)."""
    if model.optimizer is not None and not model.optimizer.built:
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)


def sublayers(layer):
    """``layer`` and every layer inside it, at any depth (``layer._flatten_layers()``,
    keras/src/layers/layer.py). Keras 3 has no public walk over a layer's sub-layers (only
    ``Model.layers``, one level deep); tower locking needs it to find the BatchNormalization and
    LayerNormalization layers of a group."""
    return list(layer._flatten_layers(include_self=True))


def weight_decay_excluded(optimizer, variables):
    """The ``variables`` that ``optimizer`` trains without weight decay ([] if it has none).

    Calls ``optimizer._use_weight_decay(variable)`` (keras/src/optimizers/base_optimizer.py).
    ``exclude_from_weight_decay(var_list=...)`` keeps the exclusions by ``id(variable)`` and
    leaves them out of the optimizer's config, so a saved model would lose them; CLIP records
    them in its compile config, and this method is the only way to read them back.
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    if optimizer is None or not getattr(optimizer, "weight_decay", None):
        return []
    return [v for v in variables if not optimizer._use_weight_decay(v)]


def in_multi_worker_mode(strategy):
    """True for a MultiWorkerMirroredStrategy that spans more than one worker.

    Reads ``strategy.extended._in_multi_worker_mode()``: Keras reduces train_step logs
    differently in that case (see ``keras_clip.strategy.replica_logs``) and TF exposes the mode
    only through this private method.
    """
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def onednn_enabled():
    """Whether TensorFlow runs its CPU kernels (MatMul, Conv2D, …) with oneDNN in this process.

    Reads ``tensorflow.python.util._pywrap_util_port.IsMklEnabled()``; TensorFlow has no public
    API for it. Since TF 2.9 the x86 Linux packages turn oneDNN on by default only on CPUs with
    neural-network instructions (AVX512_VNNI, AVX512_BF16, AVX_VNNI, AMX; TF 2.9 release notes),
    and ``TF_ENABLE_ONEDNN_OPTS=0/1`` overrides that. Without it TensorFlow's graph matmuls are
    Eigen's, slower than XLA's CPU dots (`CLIP.compile`'s ``xla_towers="auto"`` uses this).
    """
    from tensorflow.python.util import _pywrap_util_port
    return bool(_pywrap_util_port.IsMklEnabled())


def regex_split_with_offsets_op():
    """TF Text's raw ``RegexSplitWithOffsets`` op, or None if this TF Text does not expose it.

    ``tensorflow_text.regex_split`` wraps the op in ~300 graph ops of ragged bookkeeping per call;
    the tokenizer calls the op itself (tensorflow_text/python/ops/regex_split_ops.py).
    """
    try:
        from tensorflow_text.python.ops.regex_split_ops import gen_regex_split_ops
    except ImportError:  # pragma: no cover - layout of a future TF Text
        return None
    return gen_regex_split_ops


def convert_variables_to_constants_v2(concrete_function):
    """Freezes a concrete function's variables into constants (for TFLite conversion of a
    function whose weights must be inlined). TF exposes this only under tensorflow.python."""
    from tensorflow.python.framework.convert_to_constants import \
        convert_variables_to_constants_v2 as convert
    return convert(concrete_function)


def tflite_schema():
    """The TFLite flatbuffer schema module (to list a converted model's operators); TF ships it
    only under tensorflow.lite.python."""
    from tensorflow.lite.python import schema_py_generated
    return schema_py_generated
