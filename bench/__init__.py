"""Benchmarks: `prepay bench NAME` runs `bench.NAME.main`; each prints one JSON object last."""
