"""One LightningModule per training stage (classifier, refine, segmenter) on one base (common), their checkpoints and callbacks (seed_monitor, visuals)."""
