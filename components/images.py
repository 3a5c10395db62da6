"""Image inputs that hand the handler the uploaded file, undecoded.

Gradio's ``gr.Image`` and ``gr.Sketchpad`` open (and often fully decode) an upload in their
``preprocess``, before any handler runs: a non-image fails there with a bare "Error", and a
decompression bomb is decoded in full. The inputs built here keep the same browser widgets but
pass the file's path on, so the library's ``open_image`` decodes it with its pixel limit and its
messages.

The override is set on the instance: a subclass of a Gradio component makes Gradio write a
``.pyi`` stub next to this module at import time.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gradio as gr
from gradio import processing_utils

__all__ = ["image_input", "sketch_input"]


def _image_path(component: gr.Image, payload: Any) -> str | None:
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):  # pasted as a data URL: store the bytes as they are
        return processing_utils.save_base64_to_cache(payload.url, component.GRADIO_CACHE)
    if payload.path is None:
        raise gr.Error("No image was received; upload it again.")
    return str(payload.path)


def _drawing_path(component: gr.Sketchpad, payload: Any) -> dict[str, Any] | None:
    if payload is None:
        return None
    composite: Any = payload.composite
    if payload.id is not None:  # sent as blobs through the editor's own upload endpoint
        blobs = component.blob_storage.pop(payload.id, None)
        composite = blobs.composite if blobs else None
    if isinstance(composite, (bytes, bytearray)):
        composite = processing_utils.save_bytes_to_cache(bytes(composite), "drawing.png", component.GRADIO_CACHE)
    elif composite is not None:
        composite = str(composite.path)
    return {"background": None, "layers": [], "composite": composite}


def image_input(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose value is the path of the uploaded file (never decoded by Gradio)."""
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = partial(_image_path, image)
    return image


def sketch_input(**kwargs: Any) -> gr.Sketchpad:
    """A ``gr.Sketchpad`` whose value is ``{"composite": path}`` (the drawing as a file, never decoded by Gradio)."""
    sketch = gr.Sketchpad(type="filepath", **kwargs)
    sketch.preprocess = partial(_drawing_path, sketch)
    return sketch
