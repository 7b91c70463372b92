"""Getting a model to run: the zoo of named checkpoints, the weights cache and device/precision choice."""
