"""Cross-request batching: which jobs may share a forward pass (keys), which run next (former),
how many images fit (budget), and what the engine measured (stats). Pure Python: no torch."""
