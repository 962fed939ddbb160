"""The autoencoder family: one interface (``base``), the models, and the registry that builds them by name."""
