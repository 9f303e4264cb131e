"""Results: a run folder's metrics (summary), the report, the ablation tables."""
