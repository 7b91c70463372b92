"""Keeping embeddings: the memory/zarr embedding store, image fingerprints and atomic writes."""
