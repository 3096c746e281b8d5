"""Batch jobs: training entry points and the nightly rebuild."""
