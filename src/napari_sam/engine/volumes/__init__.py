"""Volumes: carrying objects through z by prompting, and linking per-slice labels across slices."""
