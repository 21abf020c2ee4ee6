import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def xla_compiled_calls(graph):
    """The function-call ops of a tf.Graph that XLA must compile (``_XlaMustCompile`` set),
    i.e. calls of a ``tf.function(jit_compile=True)`` traced into ``graph``."""
    return [op for op in graph.get_operations()
            if "_XlaMustCompile" in op.node_def.attr and op.get_attr("_XlaMustCompile")]
