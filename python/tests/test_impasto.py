"""The Python package end to end: numpy in/out, PIL, errors, threads, the CLI's pixels."""

import json
import os
import pathlib
import subprocess
import threading
import time

import numpy as np
import pytest

import impasto
from _strict import need, skip

ROOT = pathlib.Path(__file__).resolve().parents[2]
COFFEE = ROOT / "assets" / "coffee.jpg"
SHARED = pathlib.Path(os.environ.get("IMPASTO_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="module")
def model():
    return impasto.Model("great_wave")


def smooth(h, w, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), (x + y) % 256], -1)
    img = (base + rng.integers(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
    if c == 4:
        alpha = ((x * 7 + y * 3) % 256).astype(np.uint8)[..., None]
        img = np.concatenate([img, alpha], -1)
    return img


def test_styles_lists_the_built_ins():
    assert "great_wave" in impasto.styles()
    m = impasto.Model("great_wave")
    assert m.arch == "johnson" and m.parameters > 1_000_000
    assert m.styles == ["great_wave"]


def test_the_built_ins_blend_as_one_network():
    assert "builtins" in impasto.styles()
    b = impasto.Model("builtins")
    assert "great_wave" in b.styles and "udnie" in b.styles and len(b.styles) >= 5
    img = smooth(40, 48)
    wave = b.stylize(img, mix="great_wave")
    assert np.array_equal(wave, impasto.Model("great_wave").stylize(img))
    blend = b.stylize(img, mix={"great_wave": 0.5, "udnie": 0.5})
    assert not np.array_equal(blend, wave)


def test_numpy_output_equals_the_cli_output_bit_for_bit(model, tmp_path):
    exe = pathlib.Path(os.environ.get("IMPASTO_BIN", ROOT / "target" / "release" / "impasto"))
    if not exe.exists():
        skip(f"no impasto binary at {exe} (cargo build --release)")
    out = tmp_path / "cli.png"
    subprocess.run([str(exe), "stylize", str(COFFEE), "--style", "great_wave", "-o", str(out)], check=True)
    ours = model.stylize(impasto.read_image(COFFEE))
    cli = impasto.read_image(out)
    assert ours.shape == cli.shape
    assert np.array_equal(ours, cli), f"{np.count_nonzero(ours != cli)} values differ"


def test_odd_sizes_grayscale_and_rgba(model):
    for h, w in [(37, 53), (5, 3), (64, 1)]:
        out = model.stylize(smooth(h, w))
        assert out.shape == (h, w, 3) and out.dtype == np.uint8
    gray = smooth(41, 29)[..., 0]
    assert model.stylize(gray).shape == (41, 29, 3)
    assert model.stylize(gray[..., None]).shape == (41, 29, 3)
    rgba = smooth(30, 44, 4)
    out = model.stylize(rgba)
    assert out.shape == (30, 44, 4)
    assert np.array_equal(out[..., 3], rgba[..., 3]), "alpha kept"
    # Non-contiguous input (a transposed view) is read in logical order.
    t = np.ascontiguousarray(smooth(20, 24).transpose(1, 0, 2))
    assert np.array_equal(model.stylize(t), model.stylize(smooth(20, 24).transpose(1, 0, 2)))


def test_options_and_batch(model):
    img = smooth(48, 64)
    assert np.array_equal(model.stylize(img, strength=0.0), img)
    small = model.stylize(img, max_size=32)
    assert small.shape == (24, 32, 3)
    pc = model.stylize(img, preserve_color=True)
    assert pc.shape == img.shape
    imgs = [smooth(20, 28, seed=1), smooth(33, 17, seed=2)]
    batch = model.stylize_batch(imgs)
    for b, i in zip(batch, imgs):
        assert np.array_equal(b, model.stylize(i))


def test_pil_images_in_and_out(model):
    PIL = need("PIL.Image", "Pillow is not installed (pip install pillow)")
    img = PIL.fromarray(smooth(40, 60))
    out = model.stylize(img)
    assert isinstance(out, PIL.Image) and out.size == (60, 40)
    assert np.array_equal(np.asarray(out), model.stylize(np.asarray(img)))


def test_bad_input_raises(model, tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        model.stylize(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        model.stylize(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        model.stylize(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="strength"):
        model.stylize(smooth(8, 8), strength=2.0)
    with pytest.raises(ValueError, match="unknown style"):
        impasto.Model("no_such_style")
    with pytest.raises(FileNotFoundError):
        impasto.Model(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(impasto.ModelError, match="bad.safetensors"):
        impasto.Model(bad)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(COFFEE.read_bytes()[:2000])
    with pytest.raises(ValueError, match="broken.jpg"):
        impasto.read_image(broken)
    for bad_size in (-1, 0, 2**40):
        with pytest.raises(ValueError, match="max_size"):
            model.stylize(smooth(8, 8), max_size=bad_size)
    # A callback that is not callable is refused before the run starts (nothing written).
    out = tmp_path / "never.safetensors"
    with pytest.raises(TypeError, match="on_progress"):
        impasto.train(COFFEE, tmp_path, out, on_progress=5)
    assert list(tmp_path.glob("never*")) == []


def test_ctrl_c_stops_a_stylize_between_layers(model):
    """SIGINT lands while the engine computes, not after: a picture that takes seconds is
    stopped within a fraction of a second with KeyboardInterrupt."""
    import signal

    big = smooth(1600, 1600)
    t0 = time.perf_counter()
    model.stylize(smooth(400, 400))
    per_px = (time.perf_counter() - t0) / (400 * 400)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        model.stylize(big)
    took = time.perf_counter() - t0
    timer.join()
    whole = per_px * 1600 * 1600
    print(f"stopped after {took:.2f} s (the whole picture takes about {whole:.1f} s)")
    assert took < 0.3 + 1.5 and took < whole / 2, (took, whole)


def test_threads_run_while_the_engine_computes(model):
    """Two threads stylize at once and both finish with the serial results; while the
    engine runs, Python code in another thread keeps running (the GIL is released)."""
    imgs = [smooth(256, 256, seed=3), smooth(256, 320, seed=4)]
    serial = [model.stylize(i) for i in imgs]
    results = [None, None]

    def work(k):
        results[k] = model.stylize(imgs[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, s in zip(results, serial):
        assert np.array_equal(r, s)

    def count_for(seconds):
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            n += 1
        return n

    big = smooth(768, 768, seed=5)
    t0 = time.perf_counter()
    model.stylize(big)
    took = time.perf_counter() - t0
    alone = count_for(took)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (model.stylize(big), done.set()))
    worker.start()
    during = 0
    while not done.is_set():
        during += 1
    worker.join()
    # Held GIL: the loop would barely run. Released: it runs, sharing the two cores.
    print(f"python loop iterations while stylizing: {during} (alone in the same time: {alone})")
    assert during > 0.1 * alone


def test_evaluate_returns_a_dict():
    vgg = SHARED / "weights" / "vgg16_caffe_relu4_3.safetensors"
    photos = SHARED / "data" / "photos" / "val"
    style = SHARED / "data" / "styles" / "great_wave.jpg"
    if not (vgg.exists() and photos.exists() and style.exists()):
        skip(f"needs {SHARED} (VGG16 weights, val photos, styles)")
    e = impasto.evaluate("great_wave", style, photos, vgg=vgg, image_size=64)
    assert e["photos"] >= 1
    assert e["network"]["content"] > 0 and e["network"]["style"] > 0
    assert e["loss_config_recorded"] is True


def test_a_short_train_run_reports_progress_and_resumes(tmp_path):
    vgg = SHARED / "weights" / "vgg16_caffe_relu4_3.safetensors"
    photos = SHARED / "data" / "photos" / "val"
    style = SHARED / "data" / "styles" / "great_wave.jpg"
    if not (vgg.exists() and photos.exists() and style.exists()):
        skip(f"needs {SHARED} (VGG16 weights, photos, styles)")
    seen = []
    out = tmp_path / "wave.safetensors"
    r = impasto.train(style, photos, out, steps=3, batch_size=1, image_size=32, style_size=64,
                      checkpoint_every=2, vgg=vgg, on_progress=seen.append)
    assert r["outcome"] == "finished" and out.exists()
    assert [s["step"] for s in seen] == [1, 2, 3] and all(s["steps"] == 3 for s in seen)
    assert all(s["total"] > 0 for s in seen)
    m = impasto.Model(out)
    assert m.stylize(smooth(32, 32)).shape == (32, 32, 3)

    # A callback that raises stops the run with its checkpoint saved; resume continues.
    out2 = tmp_path / "stopped.safetensors"

    def stop_at_2(info):
        if info["step"] == 2:
            raise KeyError("enough")

    with pytest.raises(KeyError, match="enough"):
        impasto.train(style, photos, out2, steps=4, batch_size=1, image_size=32, style_size=64,
                      checkpoint_every=1, vgg=vgg, on_progress=stop_at_2)
    assert not out2.exists() and pathlib.Path(str(out2)[: -len(".safetensors")] + ".ckpt.safetensors").exists()
    steps = []
    r = impasto.train(style, photos, out2, steps=4, batch_size=1, image_size=32, style_size=64,
                      checkpoint_every=1, vgg=vgg, resume=True, on_progress=lambda i: steps.append(i["step"]))
    assert r["outcome"] == "finished" and out2.exists()
    assert steps[0] >= 2 and steps[-1] == 4, steps
    with pytest.raises(ValueError, match="image_size"):
        impasto.train(style, photos, tmp_path / "x.safetensors", image_size=30, vgg=vgg)


def test_training_runs_on_the_fast_kernels_unless_asked_for_the_exact_ones(tmp_path):
    vgg = SHARED / "weights" / "vgg16_caffe_relu4_3.safetensors"
    photos = SHARED / "data" / "photos" / "val"
    style = SHARED / "data" / "styles" / "great_wave.jpg"
    if not (vgg.exists() and photos.exists() and style.exists()):
        skip(f"needs {SHARED} (VGG16 weights, photos, styles)")

    def precise(path):
        # The run's provenance, from the safetensors header: `train.precise`.
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(n))["__metadata__"]
        return json.loads(meta["impasto.provenance"])["train"]["precise"]

    runs = {"default": {}, "exact": {"exact": True}, "fast_false": {"fast": False}, "fast": {"fast": True}}
    for name, kw in runs.items():
        out = tmp_path / f"{name}.safetensors"
        r = impasto.train(style, photos, out, steps=2, batch_size=1, image_size=32, style_size=64,
                          vgg=vgg, **kw)
        assert r["outcome"] == "finished"
        assert precise(out) is (name in ("exact", "fast_false")), name


def test_a_model_of_several_styles_trains_lists_and_mixes(tmp_path):
    vgg = SHARED / "weights" / "vgg16_caffe_relu4_3.safetensors"
    photos = SHARED / "data" / "photos" / "val"
    styles = SHARED / "data" / "styles"
    if not (vgg.exists() and photos.exists() and styles.exists()):
        skip(f"needs {SHARED} (VGG16 weights, photos, styles)")
    out = tmp_path / "duo.safetensors"
    r = impasto.train({"wave": styles / "great_wave.jpg", "night": styles / "starry_night.jpg"},
                      photos, out, steps=4, batch_size=1, image_size=32, style_size=64, vgg=vgg,
                      style_weights={"wave": 5})
    assert r["outcome"] == "finished"
    # The styles' gradients are balanced unless asked otherwise (each step logs its scale).
    assert '"scale"' in open(r["metrics"]).read()
    u = impasto.train({"wave": styles / "great_wave.jpg", "night": styles / "starry_night.jpg"},
                      photos, tmp_path / "plain.safetensors", steps=4, batch_size=1, image_size=32,
                      style_size=64, vgg=vgg, style_weights={"wave": 5}, balance=False)
    assert '"scale"' not in open(u["metrics"]).read()
    # Each style is scored with its own weight (wave 5; night the run's default).
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(photos.iterdir())[:2]:
        (few / f.name).write_bytes(f.read_bytes())
    e = impasto.evaluate(out, styles / "great_wave.jpg", few, vgg=vgg, image_size=32, mix="wave",
                         device="cpu")
    assert e["loss_config"]["style_weight"] == 5 and e["loss_config_recorded"]
    e = impasto.evaluate(out, styles / "starry_night.jpg", few, vgg=vgg, image_size=32, mix="night",
                         device="cpu")
    assert e["loss_config"]["style_weight"] != 5
    with pytest.raises(ValueError, match="no style is named \"sky\""):
        impasto.train({"wave": styles / "great_wave.jpg"}, photos, tmp_path / "x.safetensors",
                      steps=1, vgg=vgg, style_weights={"sky": 1})
    with pytest.raises(TypeError, match="style_weights"):
        impasto.train(styles / "great_wave.jpg", photos, tmp_path / "x.safetensors", steps=1,
                      vgg=vgg, style_weights=[("sky", 1)])
    m = impasto.Model(out, device="cpu")
    assert m.styles == ["wave", "night"]
    img = smooth(40, 56)
    wave, night = m.stylize(img, mix="wave"), m.stylize(img, mix={"night": 2.0})
    assert not np.array_equal(wave, night)
    # No mix: the first style; a string and a dict of the same blend agree.
    assert np.array_equal(m.stylize(img), wave)
    blend = m.stylize(img, mix="wave=0.5,night=0.5")
    assert np.array_equal(blend, m.stylize(img, mix={"wave": 1, "night": 1}))
    assert np.array_equal(m.stylize_batch([img], mix="night")[0], night)
    # The same as the command line's --mix, pixel for pixel.
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    from PIL import Image
    Image.fromarray(img).save(src)
    exe = pathlib.Path(os.environ.get("IMPASTO_BIN", ROOT / "target" / "release" / "impasto"))
    if not exe.exists():
        skip(f"no impasto binary at {exe} (cargo build --release)")
    else:
        subprocess.run([str(exe), "stylize", str(src), "--style", str(out), "--mix", "wave=0.5,night=0.5",
                        "-o", str(dst)], check=True, env={**os.environ, "IMPASTO_DEVICE": "cpu"})
        assert np.array_equal(np.asarray(Image.open(dst)), blend)
    for bad, match in [("sky", "its styles: wave, night"), ({"wave": -1}, "0 or more"),
                       ({"wave": 0}, "all zero"), ("wave=x", "not a number")]:
        with pytest.raises(ValueError, match=match):
            m.stylize(img, mix=bad)
    with pytest.raises(TypeError, match="mix"):
        m.stylize(img, mix=3)
    # A style added to it: three styles, the first two as they were.
    out3 = tmp_path / "trio.safetensors"
    impasto.train({"scream": styles / "the_scream.jpg"}, photos, out3, steps=2, batch_size=1,
                  image_size=32, style_size=64, vgg=vgg, base=out)
    m3 = impasto.Model(out3, device="cpu")
    assert m3.styles == ["wave", "night", "scream"]
    assert np.array_equal(m3.stylize(img, mix="night"), night)
