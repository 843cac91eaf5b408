"""examples: runnable pipelines and data builders (data streams in examples/data.py)."""
