"""Image layers as arrays: level 0 of multiscale data, RGB vs grayscale, coordinates, the displayed slice.

Conventions: an image layer's *data* frame is its array index space, in
napari's axis order (..., row, col) (an RGB layer has a trailing channel axis
that is not a spatial axis). The *world* frame is the frame after the layer's
scale / translate / affine; the viewer's dims live there. Every function names
which frame its coordinates are in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidImageError, InvalidPromptError

ROLE_KEY = "napari_sam_role"  # layer.metadata key naming a layer napari-sam made: points, boxes, preview, target


def unwrap(obj: Any) -> Any:
    """The real object behind napari's ``PublicOnlyProxy`` (given to plugin widgets), else ``obj``.

    Identity checks (``layer is event.value``) and weak-keyed registries need the real object.
    """
    while obj is not None and hasattr(obj, "__wrapped__"):
        obj = obj.__wrapped__
    return obj


def layer_array(layer: Any) -> Any:
    """The full-resolution array of an Image layer: ``data[0]`` when multiscale, else ``data``.

    Returns the array as stored (numpy, dask or zarr); shape (..., H, W) or (..., H, W, C) if RGB.
    """
    if getattr(layer, "multiscale", False):
        return layer.data[0]
    return layer.data


def is_rgb(layer: Any) -> bool:
    """Whether the layer's last axis holds colour channels."""
    return bool(getattr(layer, "rgb", False))


def layer_axes(layer: Any) -> str:
    """Axis letters of an Image layer's array for the engine (``axes=`` of ``Segmenter.set_image``).

    The user sees a layer's axes in napari (its sliders, ``rgb``; napari splits a channel axis into
    one layer per channel), so its leading axes are slices whatever their length:
    ``"z" * n + "yx"``, with ``"s"`` appended for an RGB layer.
    """
    rgb = is_rgb(layer)
    n_lead = len(layer_array(layer).shape) - (3 if rgb else 2)
    return "z" * n_lead + "yx" + ("s" if rgb else "")


def can_be_channels(layer: Any, other: Any) -> bool:
    """Whether ``other`` can join ``layer`` in a channel composite: both grayscale, same array shape.

    (napari opens a multichannel file as one layer per channel, all of one shape.)
    """
    return (not is_rgb(layer) and not is_rgb(other)
            and tuple(layer_array(layer).shape) == tuple(layer_array(other).shape))


def channel_input(layers: Sequence[Any]) -> tuple[Any, str, list[int] | None]:
    """``(array, axes, channel)`` for the engine's ``set_image`` / ``segment_stack`` from image layers.

    One layer: its array and :func:`layer_axes` (``channel`` None). Several grayscale layers of one
    shape: a lazy (dask) stack of their arrays along a new leading channel axis ``"c"`` and every
    channel chosen, so the encoder sees their mean, computed by the engine's own channel choice
    (:func:`napari_sam.engine.images.channels.select_channels`), slice by slice.

    Raises :class:`InvalidImageError` for no layer, an RGB layer or layers of different shapes.
    """
    layers = [unwrap(layer) for layer in layers]
    if not layers:
        raise InvalidImageError("Choose at least one image layer for the channels SAM sees.")
    first = layers[0]
    if len(layers) == 1:
        return layer_array(first), layer_axes(first), None
    bad = [layer.name for layer in layers[1:] if not can_be_channels(first, layer)]
    if bad or is_rgb(first):
        raise InvalidImageError(
            f"A channel composite needs grayscale layers of one shape; {', '.join(bad) or first.name} "
            f"{'does' if len(bad) <= 1 else 'do'} not match {first.name!r} (shape "
            f"{tuple(layer_array(first).shape)}{', RGB' if is_rgb(first) else ''}). Choose layers of the same shape."
        )
    import dask.array as da

    shape = tuple(int(s) for s in layer_array(first).shape)
    chunks = (1,) * (len(shape) - 2) + shape[-2:]  # one chunk per 2D slice: a click reads one slice
    arrays = [a if isinstance(a, da.Array) else da.from_array(a, chunks=chunks, name=False)
              for a in (layer_array(layer) for layer in layers)]
    return da.stack(arrays), "c" + layer_axes(first), list(range(len(layers)))


def spatial_ndim(layer: Any) -> int:
    """Number of non-channel axes of the layer (napari's ``layer.ndim``)."""
    return int(layer.ndim)


def labels_shape(layer: Any) -> tuple[int, ...]:
    """Shape a Labels layer must have to hold masks of this image layer: the array shape without channels."""
    shape = tuple(int(s) for s in layer_array(layer).shape)
    return shape[:-1] if is_rgb(layer) else shape


def world_to_data(layer: Any, world_coords: Sequence[float]) -> np.ndarray:
    """One position from the world frame (viewer dims, longer is fine: last axes used) to ``layer``'s data frame.

    Returns a float64 (layer.ndim,) array.
    """
    return np.asarray(layer.world_to_data(np.asarray(world_coords, dtype=np.float64)), dtype=np.float64)


def data_to_world(layer: Any, data_coords: Sequence[float]) -> np.ndarray:
    """One position from ``layer``'s data frame to the world frame; float64 (layer.ndim,)."""
    return np.asarray(layer.data_to_world(np.asarray(data_coords, dtype=np.float64)), dtype=np.float64)


def layer_to_layer(src: Any, dst: Any, coords: np.ndarray) -> np.ndarray:
    """Map (N, src.ndim) data coordinates of ``src`` into (N, dst.ndim) data coordinates of ``dst`` via world.

    Layers with equal transforms (the prompt layers are created so) are mapped exactly.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, src.ndim)
    out = np.empty((len(coords), dst.ndim), dtype=np.float64)
    for i, c in enumerate(coords):
        out[i] = world_to_data(dst, data_to_world(src, c))
    return out


def check_displayed_axes(viewer: Any) -> None:
    """Raise :class:`InvalidPromptError` unless the viewer shows a 2D view of the last two axes, unrotated.

    napari-sam prompts on 2D (row, col) slices of the last two axes (the usual view).
    """
    dims = viewer.dims
    if dims.ndisplay != 2:
        raise InvalidPromptError(
            "napari-sam segments 2D slices; switch the viewer to 2D display (the 2D/3D button)."
        )
    n = dims.ndim
    if tuple(dims.order[-2:]) != (n - 2, n - 1):
        raise InvalidPromptError(
            "napari-sam prompts on the last two axes (row, col); the viewer shows other axes or "
            "transposed ones. Reset the axis order (the 'transpose'/'roll' buttons) to segment."
        )


def displayed_slice_key(viewer: Any, layer: Any) -> tuple[int, ...]:
    """Index of the 2D slice of ``layer`` the viewer shows, in the layer's data frame.

    Returns a tuple with one int per leading (non-spatial) axis, () for a 2D layer.
    Raises :class:`InvalidPromptError` when the viewer's current position lies
    outside the layer along a slice axis, or shows other axes than the last two.
    """
    check_displayed_axes(viewer)
    lead = labels_shape(layer)[:-2]
    if not lead:
        return ()
    data_pos = world_to_data(layer, viewer.dims.point)
    key = tuple(int(np.round(v)) for v in data_pos[: len(lead)])
    if any(not 0 <= k < n for k, n in zip(key, lead)):
        raise InvalidPromptError(
            f"The displayed slice {key} lies outside image layer {layer.name!r} (slice axes of shape {lead})."
        )
    return key


def check_image_layer(layer: Any) -> None:
    """Refuse layers napari-sam cannot segment, naming why (:class:`InvalidImageError`)."""
    if layer is None:
        raise InvalidImageError("No image layer: open an image and pick it in napari-sam's 'image' list.")
    if getattr(layer, "_type_string", None) != "image":
        raise InvalidImageError(f"Layer {layer.name!r} is not an Image layer.")
    shape = labels_shape(layer)
    if len(shape) < 2 or min(shape[-2:]) < 2:
        raise InvalidImageError(f"Image layer {layer.name!r} of shape {shape} has no 2D plane to segment.")
