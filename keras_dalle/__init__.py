"""keras_dalle: DALL-E (discrete VAE, sparse-attention transformer, sampling) for Keras 3."""
