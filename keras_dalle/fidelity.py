"""``python -m keras_dalle.fidelity``: prompt fidelity of a DALL·E trained on the built-in shapes,
per split, before and after CLIP reranking, with Wilson 95% intervals.

The entry point only; the command and the library live in `keras_dalle.sampling.fidelity`
(``python -m keras_dalle.sampling.fidelity`` is the same command).
"""

from keras_dalle.sampling.fidelity import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
