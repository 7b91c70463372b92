"""Reading images: files as lazy arrays, the slice view of an array, and intensity normalisation."""
