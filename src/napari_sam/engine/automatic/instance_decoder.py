"""Automatic instance segmentation with a trained instance decoder (micro-sam's "AIS").

One image (or its embedding) -> the decoder's three maps -> a seeded watershed
(:mod:`napari_sam.engine.automatic.instance_maps`) -> an instance label image.
No prompts, no grid: one decoder pass per image, whatever the number of objects.

The model must carry a decoder (``model.instance_decoder``; ``load_model`` attaches
the published one for the zoo models listed by
:func:`napari_sam.engine.models.zoo.decoder_models`).

Entry points: :func:`segment_with_decoder_steps` (a generator yielding
:class:`~napari_sam.engine.progress.Progress`, returning the labels) and its
blocking twin :func:`segment_with_decoder`; :func:`decoder_maps` returns the maps.

**Tiles.** With ``tile_shape``, an image is cut into the tiles of
:class:`~napari_sam.engine.prediction.tiling.TileGrid` (the same grid automatic mask
generation and the click path use): each tile's crop, which holds ``halo`` pixels of
context around the tile's inner region, is embedded and decoded on its own, and only
its inner region is written into whole-image maps. The watershed then runs once on the
stitched maps, so an object that crosses a tile border is one object (micro-sam's tiled
decoder stitches its maps the same way). Intensities are normalised once for the whole
image, never per tile.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...errors import CheckpointError, InvalidParameterError, NoDecoderError
from ..prediction.predictor import Embedding, SamPredictor
from ..progress import Progress, ProgressGenerator, run_blocking
from .instance_maps import InstanceMapSettings, labels_from_maps


def require_decoder(model) -> torch.nn.Module:
    """The model's instance decoder; :class:`NoDecoderError` naming the models that have one, or
    :class:`CheckpointError` when the attached decoder reads embeddings of another width than the encoder's."""
    decoder = getattr(model, "instance_decoder", None)
    if decoder is None:
        from ..models.zoo import decoder_models

        name = getattr(model, "model_type", "this model")
        raise NoDecoderError(
            f"The model {name!r} has no instance decoder, so it cannot segment automatically with one. "
            f"Models with a decoder: {', '.join(decoder_models())}; or use automatic mask generation "
            f"(grid prompts), which works with every model."
        )
    from ..models.instance_decoders import embed_dim_of

    wanted, width = getattr(getattr(decoder, "config", None), "embed_dim", None), embed_dim_of(model)
    if wanted is not None and wanted != width:
        raise CheckpointError(
            f"The attached instance decoder reads {wanted}-channel embeddings, but this model's encoder gives "
            f"{width} channels: the decoder belongs to another model. Attach the decoder published with this "
            "model's encoder (load_model(..., decoder=PATH)).")
    return decoder


@torch.inference_mode()
def decoder_maps(model, embedding: Embedding) -> np.ndarray:
    """The decoder's maps for one embedded image.

    Args:
        model: a :class:`~napari_sam.model.Sam` with an instance decoder.
        embedding: the image's embedding (``SamPredictor.get_embedding()``): (1, C, h, w)
            features with the image's original and resized sizes.

    Returns:
        (3, H, W) float32 in [0, 1] over the image's (rows, columns): foreground
        probability, centre distance, boundary distance.
    """
    decoder = require_decoder(model)
    features = embedding.features.to(device=model.device, dtype=torch.float32)
    if features.ndim == 3:
        features = features[None]
    from ...model.instance_decoder import to_image_frame

    maps = to_image_frame(decoder(features), model.img_size, embedding.input_size, embedding.original_size)
    return maps[0].float().cpu().numpy()


def segment_with_decoder_steps(
    model,
    image: np.ndarray | None = None,
    *,
    embedding: Embedding | None = None,
    settings: InstanceMapSettings = InstanceMapSettings(),
    intensity_limits: tuple[float, float] | None = None,
    tile_shape: int | tuple[int, int] | None = None,
    halo: int | tuple[int, int] | None = None,
    options=None,
) -> ProgressGenerator[np.ndarray]:
    """Segment one 2D image automatically with the model's instance decoder.

    Args:
        model: a Sam with an instance decoder (checked first, before any work).
        image: (H, W) or (H, W, C) image (see ``SamPredictor.set_image``); not needed
            when ``embedding`` is given.
        embedding: a precomputed embedding of the image (e.g. from the embedding store).
        settings: post-processing thresholds (micro-sam's defaults).
        intensity_limits: (low, high) for non-uint8 images, e.g. computed over a stack.
        tile_shape: (rows, cols) tiles for a large image (see the module docstring); None = whole image.
        halo: (rows, cols) context around each tile's inner region (default: an eighth of the tile).
        options: :class:`~napari_sam.engine.models.device.InferenceOptions` of the encoder (None: defaults).

    Yields:
        :class:`Progress` after embedding (per tile), decoding and the watershed.

    Returns:
        (H, W) int32 labels, 0 background, objects 1..n.
    """
    require_decoder(model)
    if tile_shape is not None:
        if embedding is not None:
            raise InvalidParameterError("Give either a whole-image embedding or tile_shape, not both.")
        if image is None:
            raise ValueError("Give the image to segment tile by tile.")
        maps = yield from _tiled_maps(model, image, intensity_limits, tile_shape, halo, options)
    else:
        if embedding is None:
            if image is None:
                raise ValueError("Give the image or its embedding.")
            yield Progress(0, 3, "embedding the image")
            predictor = SamPredictor(model, options=options)
            predictor.set_image(image, intensity_limits=intensity_limits)
            embedding = predictor.get_embedding()
        yield Progress(1, 3, "decoding instance maps")
        maps = decoder_maps(model, embedding)
    yield Progress(2, 3, "watershed")
    labels = labels_from_maps(maps[0], maps[1], maps[2], settings)
    yield Progress(3, 3, f"{int(labels.max())} objects")
    return labels


def _tiled_maps(model, image, intensity_limits, tile_shape, halo, options) -> ProgressGenerator[np.ndarray]:
    """(3, H, W) decoder maps of ``image`` stitched from the inner regions of its tiles."""
    from ..images.normalize import check_image, intensity_range, to_uint8_rgb
    from ..prediction.tiling import TileGrid, default_halo

    arr = check_image(image)
    if arr.dtype != np.uint8 and intensity_limits is None:
        intensity_limits = intensity_range(arr)  # one rule for the whole image, not per tile
    rgb = to_uint8_rgb(arr, intensity_limits)
    grid = TileGrid(rgb.shape[:2], tile_shape, default_halo(tile_shape) if halo is None else halo)
    maps = np.zeros((3, *rgb.shape[:2]), np.float32)
    predictor = SamPredictor(model, options=options)
    for k, tile in enumerate(grid):
        yield Progress(k, len(grid), f"tile {k + 1}/{len(grid)}: embedding and decoding")
        predictor.set_image(np.ascontiguousarray(rgb[tile.outer_slices]))
        tile_maps = decoder_maps(model, predictor.get_embedding())
        maps[(slice(None), *tile.inner_slices)] = tile_maps[(slice(None), *tile.inner_in_crop)]
        predictor.reset_image()
    return maps


def segment_with_decoder(
    model,
    image: np.ndarray | None = None,
    *,
    embedding: Embedding | None = None,
    settings: InstanceMapSettings = InstanceMapSettings(),
    intensity_limits: tuple[float, float] | None = None,
    callback: Callable[[Progress], object] | None = None,
    tile_shape: int | tuple[int, int] | None = None,
    halo: int | tuple[int, int] | None = None,
    options=None,
) -> np.ndarray:
    """Blocking :func:`segment_with_decoder_steps`: returns (H, W) int32 labels."""
    return run_blocking(
        segment_with_decoder_steps(
            model, image, embedding=embedding, settings=settings, intensity_limits=intensity_limits,
            tile_shape=tile_shape, halo=halo, options=options,
        ),
        callback=callback,
    )


__all__ = ["decoder_maps", "require_decoder", "segment_with_decoder", "segment_with_decoder_steps"]
