"""Fine-tuning SAM on image + instance-label pairs (engine layer: no Qt, no napari).

- :mod:`.datasets`: pairs from arrays, layers' data or folders of TIFFs, validated.
- :mod:`.prompt_sampling`: points, boxes and correction clicks drawn from masks.
- :mod:`.losses`: focal + dice mask loss and IoU-prediction loss.
- :mod:`.trainer`: the training loop as a progress generator, checkpoints, resume.
- :mod:`.evaluate`: mean IoU of a centre click and of a tight box via ``SamPredictor``.
- :mod:`.synthetic`: seeded synthetic fluorescence images with their labels.
"""
