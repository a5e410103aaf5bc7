"""Open one series of a store in napari, as a user would, and save what napari shows (docs/img/napari_series.png).

Needs napari with a Qt binding and the napari-ome-zarr reader, and a display (``xvfb-run`` on a
headless machine; napari's offscreen platform has no OpenGL)::

    pip install "napari[pyqt5]" napari-ome-zarr
    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/napari_screenshot.py \\
        ctengine-demo/store.zarr/patient1/SR_2 docs/img/napari_series.png 24

The series opens as a multiscale layer over its pyramid (levels "0" to "3"; napari draws the level
that fits the canvas), in the lung window its OME-Zarr ``omero`` block sets; the lung label layer, with
the same levels, comes hidden (the reader's choice) and is shown here at 45 % opacity, with the colours
and names it carries. Exits non-zero unless the image layer is multiscale with 4 levels; the last line
says which level the screenshot was drawn from.
"""
from __future__ import annotations

import sys

import napari
from qtpy.QtWidgets import QApplication


def main(series: str, out: str, z: int) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1000, 900)
    viewer.open(series, plugin="napari-ome-zarr")
    for layer in viewer.layers:
        print(type(layer).__name__, layer.name, getattr(layer, "contrast_limits", ""), layer.scale, flush=True)
        levels = [d.shape for d in layer.data] if layer.multiscale else [layer.data.shape]
        print("  multiscale:", layer.multiscale, "levels:", levels)
        if isinstance(layer, napari.layers.Labels):
            print("label names:", dict(zip(layer.properties.get("index", []), layer.properties.get("name", []))))
            layer.visible, layer.opacity = True, 0.45
    image = next(la for la in viewer.layers if isinstance(la, napari.layers.Image))
    if not image.multiscale or len(image.data) != 4:
        sys.exit(f"{image.name}: expected a multiscale image with 4 levels, got multiscale={image.multiscale}")
    viewer.dims.set_point(0, z * viewer.layers[0].scale[0])  # world coordinates: mm along z
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(out, canvas_only=True, size=(800, 800))
    print("saved", out, "(drawn from level", image.data_level, "of the image)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
