"""The autoencoder family: one interface (``base``), the models, and the registry that builds them by name."""

# Registry names of the image denoisers (``models.family.denoisers`` defines them).
BASELINE_DENOISER = "denoise_tutorial"
DEFAULT_DENOISER = "unet_denoiser"
DENOISERS = (BASELINE_DENOISER, "dncnn", DEFAULT_DENOISER)
