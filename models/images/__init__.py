"""Images: noise models, quality metrics (PSNR, SSIM) and image-set I/O."""
