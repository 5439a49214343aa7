"""The draw-a-digit page: a Gradio app around one trained model. A sketchpad and an upload box; the top three
classes with their probabilities; the 28x28 image the model saw. Pictures become the model's input exactly as
`mnist-dist predict` makes them (data/images.py), so dark ink on white paper works. The prediction is also a named
API endpoint, /predict (an image in, a Label out), for gradio_client. `mnist-dist demo` serves it; a Space
exported with `export --format space` runs the same build()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mnist_dist import metrics
from mnist_dist.data import images
from mnist_dist.outputs import hub
from mnist_dist.run import artifact

# The 28x28 input, enlarged 7x without smoothing: each pixel the model saw stays a square.
SHOWN_SIDE = 196


def classifier(model_path: Path):
    """classify(PIL image) -> ({class: probability}, the 28x28 input enlarged), as predict does it."""
    model, info = artifact.load_model(model_path)
    layout = images.layout_for(info["dataset"])

    def classify(picture):
        if picture is None:
            return None, None
        seen = images.to_model_input(images.grey(picture), layout)  # ImageError: nothing drawn yet
        probs = metrics.predict(model, torch.from_numpy(seen[None]), info["mean"], info["std"])[0]
        shown = np.kron(seen, np.ones((SHOWN_SIDE // 28, SHOWN_SIDE // 28), np.uint8))
        return {c: float(p) for c, p in zip(info["classes"], probs)}, shown

    return classify, info


def build(model_path: Path, title: str | None = None):
    """The page, as a gr.Blocks app (launch() it)."""
    import gradio as gr

    classify, info = classifier(model_path)
    dataset = hub.dataset_names(info["dataset"])[1]
    drawn = "a digit" if all(c.isdigit() for c in info["classes"]) else "one of its classes"
    title = title or f"Draw {drawn}: {info['name']} trained on {dataset}"

    def predict(picture):
        """An image in, the top classes with their probabilities out."""
        try:
            return classify(picture)[0]
        except images.ImageError as e:
            raise gr.Error(str(e)) from None

    def show(editor_or_picture):
        picture = (
            editor_or_picture.get("composite")
            if isinstance(editor_or_picture, dict)
            else editor_or_picture
        )
        try:
            return classify(picture)
        except images.ImageError:  # an empty canvas: nothing to say yet
            return None, None

    with gr.Blocks(title=title) as app:
        gr.Markdown(
            f"## {title}\nPick the brush at the sketchpad's left and draw a digit with the mouse, or upload a photo of "
            "one (dark ink on light paper works)."
        )
        with gr.Row():
            with gr.Column():
                with gr.Tab("Draw"):
                    # A black pen about as thick, on 280x280, as MNIST's strokes on 28x28.
                    pen = gr.Brush(default_size=9, colors=["#000000"], color_mode="fixed")
                    pad = gr.Sketchpad(
                        type="pil",
                        image_mode="RGBA",
                        canvas_size=(280, 280),
                        brush=pen,
                        label="sketchpad",
                    )
                with gr.Tab("Upload"):
                    upload = gr.Image(type="pil", label="a picture")
            with gr.Column():
                label = gr.Label(num_top_classes=3, label="the model's guess")
                seen = gr.Image(label="what the model saw (28x28)", type="numpy")
        pad.change(show, pad, [label, seen], api_visibility="private")
        upload.change(show, upload, [label, seen], api_visibility="private")
        # The named endpoint: gradio_client.Client(URL).predict(handle_file(PATH), api_name="/predict").
        gr.Button(visible=False).click(predict, upload, label, api_name="predict")
    return app
