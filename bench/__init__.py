"""Benchmarks, the demo and the link bench: on top of everything, imported by nothing in the runtime.

Each benchmark writes only what its run measured to bench/results/*.md (gathered into
BENCHMARKS.md by `python -m bench.report`); how to read them is in docs/benchmarks-notes.md.
"""
