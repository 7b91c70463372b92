"""Qt / magicgui widgets of napari-sam (the only package importing qtpy, magicgui widgets, napari threading).

Import the submodules directly (``napari_sam.widgets.main_widget``); this package
imports nothing itself so the manifest can name each widget lazily.
"""
