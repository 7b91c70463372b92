"""Inference engine: predictor, model zoo, tiling, embedding store, batch runs.

No Qt and no napari here; usable from scripts, notebooks and Dask workers.
"""
