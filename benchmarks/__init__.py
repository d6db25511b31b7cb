"""Benchmarks: the stack's round trips against a floor measured in the same run."""
