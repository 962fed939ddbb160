"""What every job shares below the ML: flags, the file layer and versioned artefacts."""
