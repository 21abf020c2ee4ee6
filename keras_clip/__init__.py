"""keras_clip: OpenAI CLIP for Keras 3 on TensorFlow."""
