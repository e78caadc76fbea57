"""impasto.ray on a local Ray instance: every output equals the single-process result."""

import os
import pathlib
import shutil
import time

import numpy as np
import pytest

import impasto
from _strict import need, skip

SHARED = pathlib.Path(os.environ.get("IMPASTO_SHARED", pathlib.Path(__file__).resolve().parents[3] / "shared"))


def test_ray_data_stylizes_a_folder_like_one_process(tmp_path):
    ray = need("ray", "ray is not installed (pip install 'ray[data]')")
    photos = sorted((SHARED / "data" / "photos" / "val").glob("*.jpg"))[:20]
    if len(photos) < 20:
        skip(f"needs 20 photos under {SHARED}/data/photos/val")
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


def test_the_ray_runner_keeps_the_clis_guarantees(tmp_path, monkeypatch, capsys):
    """Originals refused, one output per input (relative inputs keep their tree, clashing
    names get -2), and every refusal is one line with exit 2, before Ray starts."""
    from impasto.ray import main, plan

    photos = sorted((SHARED / "data" / "photos" / "val").glob("*.jpg"))[:2]
    if len(photos) < 2:
        skip(f"needs 2 photos under {SHARED}/data/photos/val")
    src = tmp_path / "in"
    for d in ("p", "q"):
        (src / d).mkdir(parents=True)
        shutil.copy(photos[0], src / d / "a.jpg")
    shutil.copy(photos[1], src / "c.jpg")
    m = impasto.Model("great_wave")
    impasto.write_image(src / "c.png", m.stylize(impasto.read_image(photos[1]), max_size=32))
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)

    # The plan: a relative input keeps its tree; c.jpg and c.png both want c.png.
    pl = plan("in", "out", "png")
    outs = sorted(pathlib.Path(o).as_posix() for _, o in pl.items)
    assert outs == ["out/c-2.png", "out/c.png", "out/p/a.png", "out/q/a.png"], outs
    assert len(pl.notes) == 1 and "c-2.png" in pl.notes[0]

    # Refusals: exit 2, one line, nothing written, before Ray starts.
    for argv, says in [
        (["--style", "great_wave", "--input", "in", "--output", "in"], "overwrite the input"),
        (["--style", "great_wave", "--input", "./in/../in", "--output", str(src)], "overwrite the input"),
        (["--style", "no_such_style", "--input", "in", "--output", "out"], "no_such_style"),
        (["--style", "great_wave", "--input", "missing", "--output", "out"], "missing"),
        (["--style", "great_wave", "--mix", "nope", "--input", "in", "--output", "out"],
         "its styles: great_wave"),
        (["--style", "great_wave", "--mix", "great_wave=-1", "--input", "in", "--output", "out"],
         "great_wave"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
    (tmp_path / "empty").mkdir()
    assert main(["--style", "great_wave", "--input", "empty", "--output", "out"]) == 2
    assert "no images" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "out").exists()

    # A whole run from a relative input: four inputs, four files.
    ray = need("ray", "ray is not installed (pip install 'ray[data]')")
    try:
        rc = main(["--style", "great_wave", "--mix", "great_wave", "--input", "in", "--output",
                   "out", "--ext", "png", "--max-size", "32", "--concurrency", "1"])
    finally:
        ray.shutdown()
    assert rc == 0, capsys.readouterr().err
    assert "4 of 4" in capsys.readouterr().out
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["c-2.png", "c.png", "p/a.png", "q/a.png"], written
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
