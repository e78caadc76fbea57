"""The GPU backend from Python: `impasto.devices()`, `Model(..., device=...)` and the same
pixels as the CPU within 2/255 (on Mesa's lavapipe where the machine has no GPU)."""

import os
import pathlib

import numpy as np
import pytest

import impasto
from _strict import skip

ROOT = pathlib.Path(__file__).resolve().parents[2]
COFFEE = str(ROOT / "assets" / "coffee.jpg")
SHARED = pathlib.Path(os.environ.get("IMPASTO_SHARED", ROOT.parent / "shared"))


def test_devices_lists_adapters_and_what_auto_picks():
    d = impasto.devices()
    assert d["auto"] in ("cpu", "gpu")
    assert d["cpu_threads"] >= 1
    for a in d["adapters"]:
        assert a["name"] and a["backend"] and a["kind"]
    if not d["adapters"]:
        skip("no Vulkan/Metal/DX12 adapter (install mesa-vulkan-drivers)")


def test_a_model_on_the_gpu_gives_the_cpus_pixels():
    if not impasto.devices()["adapters"]:
        skip("no Vulkan/Metal/DX12 adapter (install mesa-vulkan-drivers)")
    img = impasto.read_image(COFFEE)[:96, :128]
    cpu = impasto.Model("great_wave", device="cpu")
    gpu = impasto.Model("great_wave", device="gpu")
    assert cpu.device.startswith("cpu")
    assert gpu.device.startswith("gpu: ")
    a = cpu.stylize(img).astype(int)
    b = gpu.stylize(img).astype(int)
    assert a.shape == b.shape == img.shape
    assert np.abs(a - b).max() <= 2


def test_a_bad_device_is_a_value_error():
    with pytest.raises(ValueError, match="unknown device"):
        impasto.Model("great_wave", device="tpu")


def test_train_and_evaluate_take_a_device(tmp_path):
    vgg = SHARED / "weights" / "vgg16_caffe_relu4_3.safetensors"
    photos = SHARED / "data" / "photos" / "val"
    style = SHARED / "data" / "styles" / "great_wave.jpg"
    if not (vgg.exists() and photos.exists() and style.exists()):
        skip(f"needs {SHARED} (VGG16 weights, photos, styles)")
    if not impasto.devices()["adapters"]:
        skip("no Vulkan/Metal/DX12 adapter (install mesa-vulkan-drivers)")
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(photos.iterdir())[:2]:
        (few / p.name).write_bytes(p.read_bytes())
    losses = {}
    for device in ("cpu", "gpu"):
        out = tmp_path / f"{device}.safetensors"
        r = impasto.train(style, few, out, steps=2, batch_size=1, image_size=32, style_size=64,
                          vgg=vgg, device=device)
        assert r["outcome"] == "finished"
        e = impasto.evaluate(out, style, few, vgg=vgg, image_size=32, style_size=64,
                             device=device)
        losses[device] = e["network"]["total"]
    assert abs(losses["cpu"] - losses["gpu"]) <= 1e-3 * losses["cpu"]
