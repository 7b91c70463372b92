"""Automatic instance segmentation: the grid-prompt mask generator, its records and label images."""
