"""Fitting models: the one fit loop (``fit``), its settings, the ECG candidates and denoiser training."""
