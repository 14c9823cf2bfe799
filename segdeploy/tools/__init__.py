"""Tools on top of the pipeline: bench, operator profile, the demo."""
