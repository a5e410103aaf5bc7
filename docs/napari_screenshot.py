"""Open one series of a store in napari, as a user would, and save what napari shows (docs/img/napari_series.png).

Needs napari with a Qt binding and the napari-ome-zarr reader, and a display (``xvfb-run`` on a
headless machine; napari's offscreen platform has no OpenGL)::

    pip install "napari[pyqt5]" napari-ome-zarr
    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/napari_screenshot.py \\
        ctengine-demo/store.zarr/patient1/SR_2 docs/img/napari_series.png 24

The series opens in the lung window its OME-Zarr ``omero`` block sets; the lung label layer comes
hidden (the reader's choice) and is shown here at 45 % opacity, with the colours and names it carries.
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
        if isinstance(layer, napari.layers.Labels):
            print("label names:", dict(zip(layer.properties.get("index", []), layer.properties.get("name", []))))
            layer.visible, layer.opacity = True, 0.45
    viewer.dims.set_point(0, z * viewer.layers[0].scale[0])  # world coordinates: mm along z
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(out, canvas_only=True, size=(800, 800))
    print("saved", out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
