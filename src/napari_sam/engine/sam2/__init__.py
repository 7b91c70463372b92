"""SAM 2.1 predictors with Meta's APIs: one image (``SAM2ImagePredictor``) and sequences (``SAM2VideoPredictor``)."""
