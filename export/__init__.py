"""export: SavedModels for TF Serving and TFLite conversion of keras_clip / keras_dalle models."""

# First: keras_clip quiets TensorFlow's start-up in a `python -m` command run (keras_clip/cli.py).
import keras_clip  # noqa: E402,F401
