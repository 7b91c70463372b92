"""Prompted prediction: the predictor, the napari-order segmenter, prompt checks, tiles and tiled prediction."""
