"""A model of several styles exported as ONNX: the style weights are the graph's second
input, and onnxruntime blends exactly as impasto does."""

import os
import pathlib
import subprocess

import numpy as np

import impasto
from _strict import need, skip

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXE = pathlib.Path(os.environ.get("IMPASTO_BIN", ROOT / "target" / "release" / "impasto"))


def three_styles(tmp_path):
    """The built-in udnie with its norms as row 0 and two other rows (scaled, shifted)."""
    st = need("safetensors.numpy", "needs the safetensors package (scripts/python_tests.sh installs it)")
    # The built-in (a row of the built-ins' network, stored as int8): as a float32 file first.
    src = tmp_path / "udnie32.safetensors"
    subprocess.run([str(EXE), "convert", "udnie", "-o", str(src), "--f32"], check=True)
    tensors = st.load_file(str(src))
    import json
    from safetensors import safe_open

    with safe_open(str(src), "np") as f:
        meta = dict(f.metadata())
    rng = np.random.default_rng(1)
    out = {}
    for name, t in tensors.items():
        t = t.astype(np.float32)
        if name.startswith(("in", "res")) and ".conv" not in name:
            rows = [t, t * rng.uniform(0.6, 1.4, t.shape), t + rng.normal(0, 0.3, t.shape)]
            t = np.stack(rows).astype(np.float32)
        out[name] = t
    cfg = json.loads(meta["impasto.config"])
    cfg["styles"] = 3
    meta = {"impasto.config": json.dumps(cfg),
            "impasto.styles": json.dumps([{"name": n} for n in ["udnie", "warm", "wild"]])}
    path = tmp_path / "trio.safetensors"
    st.save_file(out, str(path), metadata=meta)
    return path


def test_onnx_export_of_three_styles_blends_like_impasto(tmp_path):
    ort = need("onnxruntime", "needs onnxruntime (scripts/python_tests.sh installs it)")
    if not EXE.exists():
        skip(f"no impasto binary at {EXE} (cargo build --release)")
    from PIL import Image

    model = three_styles(tmp_path)
    assert impasto.Model(model, device="cpu").styles == ["udnie", "warm", "wild"]
    onnx = tmp_path / "trio.onnx"
    env = {**os.environ, "IMPASTO_DEVICE": "cpu"}
    subprocess.run([str(EXE), "export", str(model), "-o", str(onnx)], check=True, env=env)
    y, x = np.mgrid[0:96, 0:132]
    photo = np.stack([x * 255 // 131, y * 255 // 95, (x * 3 + y * 5) % 256], -1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "in.png")
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image", "style"]
    image = photo.transpose(2, 0, 1)[None].astype(np.float32)
    results = []
    for mix, w in [("udnie=0.25,warm=0.75", [0.25, 0.75, 0.0]), ("warm=1,wild=1,udnie=2", [2.0, 1.0, 1.0])]:
        out = tmp_path / "out.png"
        subprocess.run([str(EXE), "stylize", str(tmp_path / "in.png"), "--style", str(model), "--mix", mix,
                        "--margin", "0", "-o", str(out)], check=True, env=env)
        ours = np.asarray(Image.open(out)).astype(np.int32)
        # The graph normalises the weights itself: give them as they are.
        theirs = sess.run(None, {"image": image, "style": np.array(w, np.float32)})[0][0]
        theirs = np.clip(np.rint(theirs), 0, 255).astype(np.int32).transpose(1, 2, 0)
        diff = np.abs(ours - theirs)
        assert diff.max() <= 1, f"{mix}: max difference {diff.max()} (of 255)"
        results.append(ours)
    assert np.abs(results[0] - results[1]).mean() > 1.0, "the two blends differ"
