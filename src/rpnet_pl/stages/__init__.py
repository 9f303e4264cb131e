"""One LightningModule per stage (classifier, affinity, segmenter) and their per-image inference steps."""
