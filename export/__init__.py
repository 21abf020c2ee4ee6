"""export: SavedModels for TF Serving and TFLite conversion of keras_clip / keras_dalle models."""
