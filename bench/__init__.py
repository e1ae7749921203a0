"""Benchmarks: they measure and report (machine-readable, and into BENCHMARKS.md); tests never time things."""
