"""The pipeline: the step registry, experiment config, run-folder layout, validation, the runner, provenance and tracking."""
