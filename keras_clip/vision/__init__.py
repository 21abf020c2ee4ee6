"""CLIP's image towers: the vision transformer (`vit`) and the modified ResNet with its
attention pool (`resnet`)."""

from keras_clip.vision.resnet import AttentionPool2d, Bottleneck, ModifiedResNet
from keras_clip.vision.vit import VisionTransformer

__all__ = ["AttentionPool2d", "Bottleneck", "ModifiedResNet", "VisionTransformer"]
