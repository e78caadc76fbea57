"""The GPU backend from Python: `impasto.devices()`, `Model(..., device=...)` and the same
pixels as the CPU within 2/255 (on Mesa's lavapipe where the machine has no GPU)."""

import os

import numpy as np
import pytest

import impasto
from _strict import skip

COFFEE = os.path.join(os.path.dirname(__file__), "..", "..", "assets", "coffee.jpg")


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
