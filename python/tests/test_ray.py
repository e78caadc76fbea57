"""impasto.ray on a local Ray instance: every output equals the single-process result."""

import os
import pathlib
import shutil
import time

import numpy as np
import pytest

import impasto

SHARED = pathlib.Path(os.environ.get("IMPASTO_SHARED", pathlib.Path(__file__).resolve().parents[3] / "shared"))


def test_ray_data_stylizes_a_folder_like_one_process(tmp_path):
    ray = pytest.importorskip("ray", reason="SKIPPED: ray is not installed (pip install 'ray[data]')")
    photos = sorted((SHARED / "data" / "photos" / "val").glob("*.jpg"))[:20]
    if len(photos) < 20:
        pytest.skip(f"SKIPPED: needs 20 photos under {SHARED}/data/photos/val")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i, p in enumerate(photos):
        shutil.copy(p, (src / "sub" if i % 4 == 0 else src) / p.name)
    (src / "broken.jpg").write_bytes(photos[0].read_bytes()[:3000])
    out = tmp_path / "out"
    from impasto.ray import stylize_dataset

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        rows = stylize_dataset("great_wave", src, out, max_size=128, ext="png", concurrency=2)
        took = time.perf_counter() - t0
    finally:
        ray.shutdown()
    print(f"ray: {len(rows)} images in {took:.1f} s on 2 actors")
    assert len(rows) == 21
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and "broken.jpg" in bad[0]["error"], bad
    m = impasto.Model("great_wave")
    for r in rows:
        if r["error"]:
            continue
        src_path = pathlib.Path(r["path"])
        rel = src_path.relative_to(src.resolve()).with_suffix(".png")
        assert pathlib.Path(r["output"]) == out / rel
        want = m.stylize(impasto.read_image(src_path), max_size=128)
        got = impasto.read_image(out / rel)
        assert np.array_equal(got, want), rel
