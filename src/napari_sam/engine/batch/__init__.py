"""Batch runs: whole stacks segmented slice by slice, locally or on Dask, resumably."""
