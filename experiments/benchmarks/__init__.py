"""Benchmarks: one absl main each, timing the library's models against an independent twin on this machine."""
