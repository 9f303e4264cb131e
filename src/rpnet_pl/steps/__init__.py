"""The per-image steps (CAMs, IR labels, pseudo masks, evaluations, calibration) on one driver, `inference.run_per_image`."""
