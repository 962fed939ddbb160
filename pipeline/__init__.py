"""heartwatch batch jobs on Apache Beam: ECG detector training, batch scoring and image denoising."""
