"""Convolutional denoising autoencoders for images, registered by name through ``MODELS``."""

MODELS = {}
