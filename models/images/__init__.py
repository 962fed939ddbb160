"""Images: noise models, quality metrics (PSNR, SSIM) and image-set I/O."""

# Image-set formats ``--format`` accepts (``models.images.sets`` reads them).
IMAGE_SET_FORMATS = ("auto", "images", "npy", "npz", "tfrecord")
