"""One LightningModule per stage (classifier, refine, segmenter) and their per-image inference steps."""
