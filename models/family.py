"""The rest of the autoencoder family (LSTM, sparse, contractive, variational, image autoencoders).

Registered by name through ``MODELS``; see ``models.registry``.
"""

MODELS = {}
