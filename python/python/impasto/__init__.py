"""impasto: real-time neural style transfer (Johnson, Alahi & Fei-Fei 2016), in Rust.

    >>> import impasto, numpy as np
    >>> m = impasto.Model("great_wave")
    >>> out = m.stylize(np.zeros((64, 96, 3), np.uint8))   # H×W×3 uint8 in, H×W×3 out

Images are numpy ``uint8`` arrays (H×W gray, H×W×3 RGB, H×W×4 RGBA with the alpha kept) or
PIL images (returned as PIL images). The engine releases the GIL while it computes, so
Python threads stylize in parallel with other Python work.
"""

import json as _json

from . import _impasto
from ._impasto import (
    ImpastoError,
    ModelError,
    decode_image,
    plan_batch,
    read_image,
    styles,
    write_image,
)

__all__ = [
    "Model",
    "devices",
    "styles",
    "read_image",
    "decode_image",
    "write_image",
    "plan_batch",
    "train",
    "evaluate",
    "ImpastoError",
    "ModelError",
]


def devices():
    """The GPU adapters impasto can run on, best first (name, backend, kind, limits), and
    what ``device="auto"`` picks: ``{"adapters": [...], "auto": "gpu" | "cpu", ...}``."""
    return _json.loads(_impasto.devices_json())


def _is_pil(img):
    return type(img).__module__.startswith("PIL.")


def _to_array(img):
    import numpy as np

    if _is_pil(img):
        if img.mode not in ("L", "RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.mode else "RGB")
        return np.asarray(img)
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got dtype {a.dtype}")
    return a


def _like(out, img):
    if _is_pil(img):
        from PIL import Image

        return Image.fromarray(out)
    return out


class Model:
    """A style: a built-in name (see :func:`styles`) or a model file's path.

    Load once and reuse; one model may be used from several threads at once.
    """

    def __init__(self, style, device=None):
        """``device``: ``"auto"`` (a real GPU when there is one, else the CPU), ``"cpu"``
        or ``"gpu"`` (the best GPU adapter; ``RuntimeError`` if there is none); by default
        the ``IMPASTO_DEVICE`` environment variable, else ``"auto"``."""
        self._m = _impasto.Model(str(style), device)

    @property
    def device(self):
        """Where the network runs, e.g. ``"cpu (8 threads)"``."""
        return self._m.device

    @property
    def name(self):
        return self._m.name

    @property
    def arch(self):
        """``"johnson"`` or ``"seed"``."""
        return self._m.arch

    @property
    def parameters(self):
        return self._m.parameters

    @property
    def styles(self):
        """The styles the model holds, in order (one for an ordinary model): the names
        ``mix`` takes."""
        return self._m.styles

    def stylize(self, image, strength=1.0, preserve_color=False, max_size=None, mix=None):
        """Stylize one image; the result has the input's size (after ``max_size``).

        ``strength`` blends towards the photo (0..1); ``preserve_color`` keeps the photo's
        colours; ``max_size`` scales the longest side down first. A model of several
        styles takes ``mix``: a style's name, ``"a=0.7,b=0.3"`` or ``{"a": 0.7, "b": 0.3}``
        (weights normalised; default its first style). Bad images or parameters raise
        ``ValueError``.
        """
        out = self._m.stylize(_to_array(image), strength, preserve_color, max_size, mix)
        return _like(out, image)

    def stylize_batch(self, images, strength=1.0, preserve_color=False, max_size=None, mix=None):
        """Stylize a list of images (any sizes) in one call, the GIL released throughout."""
        images = list(images)
        outs = self._m.stylize_batch(
            [_to_array(i) for i in images], strength, preserve_color, max_size, mix
        )
        return [_like(o, i) for o, i in zip(outs, images)]

    def __repr__(self):
        return repr(self._m)


def evaluate(model, style, photos, vgg=None, image_size=256, style_size=256, margin=None,
             device=None, mix=None):
    """``impasto evaluate`` as a dict: the model's content, style and TV losses on the
    photos (bare network and the stylize pipeline) and its artifact measures, computed on
    ``device`` (``"auto"``, ``"cpu"``, ``"gpu"``; by default ``IMPASTO_DEVICE``). ``mix``
    picks the style (or blend, ``"a=0.7,b=0.3"``) of a model of several styles."""
    return _json.loads(
        _impasto.evaluate_json(
            str(model),
            str(style),
            str(photos),
            None if vgg is None else str(vgg),
            image_size,
            style_size,
            margin,
            device,
            mix,
        )
    )


def train(
    style,
    data,
    output,
    steps=None,
    epochs=None,
    batch_size=None,
    image_size=None,
    style_size=None,
    lr=None,
    content_weight=None,
    style_weight=None,
    tv_weight=None,
    arch="johnson",
    seed=None,
    checkpoint_every=None,
    val=None,
    resume=False,
    vgg=None,
    half=False,
    on_progress=None,
    device=None,
    base=None,
    exact=False,
    style_weights=None,
    balance=True,
    fast=None,
):
    """Train a style from a painting on a folder of photos (``impasto train``).

    ``style`` is a painting's path, or several (a list, or a dict ``{name: path}``) to
    train one network of several styles (names default to the files' stems). ``base``
    (a model file or built-in name) adds the styles to that model: only their norm rows
    train (at ``lr`` 1e-2 unless given) and the output holds its styles and the new ones.
    ``exact=True`` (``--exact``) runs the network on the exact kernels (the ones the PyTorch
    golden checks) and the loss network in float32, instead of the fast kernels (those
    inference uses, and bfloat16 products on CPUs with AMX), the default;
    ``fast`` is the opposite switch kept for scripts written when the fast ones were a
    choice (``fast=False`` means ``exact=True``).
    ``style_weights`` (a dict ``{name: weight}``, ``--style-weights``) gives paintings of a
    run of several styles their own style weight; the others take ``style_weight``.
    ``balance=False`` (``--no-balance``) lets each style's gradients reach the shared weights
    at the size its loss gives them instead of scaling every style's to the same size.

    Arguments left at ``None`` take impasto's defaults, the same as the command line's
    (batch 4 of 256² crops, style size 256, Adam lr 1e-3, seed 42, a checkpoint every 500
    steps, 2 epochs, the default loss weights); out-of-range values raise ``ValueError``.

    Writes ``output`` (the model), ``OUTPUT.ckpt.safetensors`` (a checkpoint every
    ``checkpoint_every`` steps; ``resume=True`` continues from it exactly), a metrics log and,
    with ``val``, preview grids. ``on_progress(info)`` is called after every step with a dict
    (``step``, ``steps``, ``content``, ``style``, ``tv``, ``total``, ``images_per_second``); if
    it raises, or on Ctrl-C, the run stops at that step with its checkpoint saved and the
    exception propagates. ``device`` is where the network trains (``"auto"``, ``"cpu"`` or
    ``"gpu"``; by default ``IMPASTO_DEVICE``, else ``"auto"``). Returns a dict: ``outcome``
    ("finished" or "interrupted"), ``model``, ``checkpoint``, ``metrics``, ``messages``.
    """
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"on_progress must be callable (a function taking one dict), got {on_progress!r}")
    p = lambda v: None if v is None else str(v)
    if isinstance(style, dict):
        styles = [f"{name}={path}" for name, path in style.items()]
    elif isinstance(style, (list, tuple)):
        styles = [str(s) for s in style]
    else:
        styles = [str(style)]
    if style_weights is not None and not isinstance(style_weights, dict):
        raise TypeError(f"style_weights must be a dict {{name: weight}}, got {style_weights!r}")
    if fast is not None:
        exact = not fast
    sw = None if style_weights is None else [(str(k), float(v)) for k, v in style_weights.items()]
    try:
        outcome, step, messages, checkpoint, metrics = _impasto.train(
            styles, str(data), str(output), steps, epochs, batch_size, image_size,
            style_size, lr, content_weight, style_weight, tv_weight, arch, seed,
            checkpoint_every, p(val), resume, p(vgg), half, on_progress, device, p(base), not exact,
            sw, bool(balance),
        )
    except OverflowError as e:
        raise ValueError(f"a size or count is out of range: {e}") from None
    out = {
        "outcome": outcome,
        "model": str(output),
        "checkpoint": checkpoint,
        "metrics": metrics,
        "messages": messages,
    }
    if outcome == "interrupted":
        out["step"] = step
    return out
