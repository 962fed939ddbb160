"""Fitting autoencoders: the one fit loop and the named training presets."""
