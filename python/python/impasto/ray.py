"""Stylize a whole photo collection with Ray Data, on one machine or a cluster.

    python -m impasto.ray --style great_wave --input photos/ --output stylized/
    python -m impasto.ray --style great_wave --input s3://bucket/photos --output /mnt/shared/out \\
        --address auto --concurrency 16

The files are read as bytes (``ray.data.read_binary_files``: local folders, or any URI
pyarrow reaches: ``s3://``, ``gs://``, ``hdfs://``), decoded with impasto's own decoders, and
stylized by actors that each load the model once (:class:`Stylizer`); each actor writes its
results under ``--output`` with the input's relative name, atomically. Which files are read
and where each result goes is impasto's own plan (:func:`plan`), the one ``impasto stylize``
uses: an input is never written over, and two inputs that would share an output name get
``NAME-2.EXT``. An unreadable image
is reported and the rest are still done. ``--output`` must be a folder every worker can write
(a local folder on one machine; a shared file system on a cluster).
"""

import argparse
import os
import pathlib
import sys

EXTENSIONS = ["jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp", "jfif"]


class Stylizer:
    """A Ray Data actor: the model is loaded once per actor; ``__call__`` stylizes a batch of
    ``{"bytes", "path"}`` rows into the targets planned for them and returns ``{"path",
    "output", "error"}`` rows."""

    def __init__(self, style, targets, strength=1.0, preserve_color=False, max_size=None,
                 threads=1, mix=None):
        # Before impasto's thread pool starts: one actor, `threads` cores.
        os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, int(threads))))
        import impasto

        self._impasto = impasto
        self.model = impasto.Model(style)
        self.targets = targets
        self.opts = dict(strength=strength, preserve_color=preserve_color, max_size=max_size, mix=mix)

    def __call__(self, batch):
        import numpy as np

        paths, outputs, errors = [], [], []
        for data, path in zip(batch["bytes"], batch["path"]):
            path = str(path)
            out, err = "", ""
            try:
                dst = self.targets.get(path) or self.targets.get(os.path.normpath(os.path.abspath(path)))
                if dst is None:
                    raise ValueError(f"{path}: not in the plan (no output was planned for it)")
                dst = pathlib.Path(dst)
                img = self._impasto.decode_image(bytes(data), path)
                dst.parent.mkdir(parents=True, exist_ok=True)
                self._impasto.write_image(dst, self.model.stylize(img, **self.opts))
                out = str(dst)
            except (ValueError, self._impasto.ImpastoError, OSError) as e:
                err = str(e)
            paths.append(path)
            outputs.append(out)
            errors.append(err)
        return {"path": np.array(paths), "output": np.array(outputs), "error": np.array(errors)}


class Plan:
    """Which files are read and where each result goes: ``items`` as ``(input, output)``
    pairs, and what to tell the user (``notes``: outputs renamed ``NAME-2``; ``warnings``:
    links and special files skipped; ``errors``: folders that could not be read)."""

    def __init__(self, items, notes=(), warnings=(), errors=()):
        self.items, self.notes, self.warnings, self.errors = list(items), list(notes), list(warnings), list(errors)


def plan(input, output, ext=None, overwrite_inputs=False):
    """The plan for ``input`` (a folder, a file, or a URI pyarrow lists) into folder
    ``output``. Local inputs take impasto's own plan (the CLI's walking, naming and the
    guard against replacing an input, which raises ``ValueError``); objects under a URI are
    named the same way."""
    import impasto

    input = str(input)
    if "://" not in input:
        if not os.path.exists(input):
            raise FileNotFoundError(f"{input}: no such file or folder")
        out = str(output)
        if not os.path.isdir(input):
            out = out.rstrip("/") + "/"
        items, notes, warnings, errors = impasto.plan_batch([input], out, ext, overwrite_inputs)
        return Plan(items, notes, warnings, errors)
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(input)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    sources = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type == pyarrow.fs.FileType.File and info.extension.lower() in EXTENSIONS:
            sources.append((info.path, info.path[len(root):].lstrip("/")))
    items, notes = impasto.plan_named(sources, str(output), ext)
    return Plan(items, notes)


def stylize_dataset(style, input, output, strength=1.0, preserve_color=False, max_size=None,
                    ext=None, concurrency=None, threads_per_actor=1, batch_size=8, plan_=None,
                    mix=None):
    """Stylize every image under ``input`` (folder or URI) into ``output``; returns a list of
    ``{"path", "output", "error"}`` dicts, one per image (``error`` empty on success).
    ``mix`` picks or blends the styles of a model of several (as ``Model.stylize`` takes it).

    The outputs keep the CLI's guarantees: an input is never written over (``ValueError``),
    every input gets its own output (``NAME-2.EXT`` where two would share a name)."""
    import ray

    p = plan_ if plan_ is not None else plan(input, output, ext)
    if not p.items:
        return []
    # Ray reports a local file by its absolute path and an object by its path without the
    # scheme: the targets are keyed the same way.
    if "://" in str(input):
        scheme = str(input).split("://", 1)[0]
        paths = [f"{scheme}://{src}" for src, _ in p.items]
        targets = {src: dst for src, dst in p.items}
    else:
        paths = [os.path.normpath(os.path.abspath(src)) for src, _ in p.items]
        targets = {k: dst for k, (_, dst) in zip(paths, p.items)}
    # Reading bytes is I/O: the read tasks ask for no CPU, so that actors holding every core
    # cannot starve them (with one CPU per actor on a small machine, they would wait forever).
    try:
        ds = ray.data.read_binary_files(paths, include_paths=True, num_cpus=0)
    except TypeError:  # Ray before the named remote parameters
        ds = ray.data.read_binary_files(paths, include_paths=True, ray_remote_args={"num_cpus": 0})
    if concurrency is None:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        concurrency = max(1, cpus // max(1, threads_per_actor))
    out = ds.map_batches(
        Stylizer,
        fn_constructor_kwargs=dict(
            style=str(style), targets=targets, strength=strength,
            preserve_color=preserve_color, max_size=max_size, threads=threads_per_actor,
            mix=mix,
        ),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=threads_per_actor,
    )
    return [
        {"path": r["path"], "output": r["output"], "error": r["error"]}
        for r in out.take_all()
    ]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m impasto.ray", description=__doc__.split("\n\n")[0])
    p.add_argument("--style", required=True, help="a built-in style name or a model file")
    p.add_argument("--input", required=True, help="a folder or a URI (s3://, gs://, ...)")
    p.add_argument("--output", required=True, help="the folder to write (shared on a cluster)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--preserve-color", action="store_true")
    p.add_argument("--max-size", type=int)
    p.add_argument("--mix", help="a model of several styles: a style's name, or a blend "
                   "such as a=0.7,b=0.3")
    p.add_argument("--ext", choices=["png", "jpg", "webp"],
                   help="write this format instead of the input's")
    p.add_argument("--overwrite-inputs", action="store_true",
                   help="allow results to replace their inputs")
    p.add_argument("--concurrency", type=int, help="actors (default: the cluster's CPUs / threads)")
    p.add_argument("--threads-per-actor", type=int, default=1)
    p.add_argument("--address", help="a running Ray cluster (`auto`); default: start one here")
    a = p.parse_args(argv)
    import impasto

    # Everything that can be refused is refused before Ray starts: exit 2 with one line.
    try:
        m = impasto.Model(a.style)
        if a.mix is not None:
            # Unknown names and bad weights are refused here, naming the model's styles.
            import numpy as np

            m.stylize(np.zeros((16, 16, 3), dtype=np.uint8), mix=a.mix)
        pl = plan(a.input, a.output, a.ext, a.overwrite_inputs)
    except (ValueError, OSError, impasto.ImpastoError) as e:
        msg = str(e)
        if "overwrite the input" in msg:
            msg += " (or pass --overwrite-inputs to replace the originals)"
        print(f"impasto: error: {msg}", file=sys.stderr)
        return 2
    for w in pl.warnings:
        print(f"impasto: warning: {w}", file=sys.stderr)
    for e in pl.errors:
        print(f"impasto: error: {e}", file=sys.stderr)
    for n in pl.notes:
        print(f"impasto: note: {n}", file=sys.stderr)
    if not pl.items:
        print(f"impasto: error: {a.input}: no images found", file=sys.stderr)
        return 2
    import ray

    ray.init(address=a.address, log_to_driver=False)
    rows = stylize_dataset(
        a.style, a.input, a.output, a.strength, a.preserve_color, a.max_size, a.ext,
        a.concurrency, a.threads_per_actor, plan_=pl, mix=a.mix,
    )
    bad = [r for r in rows if r["error"]]
    for r in bad:
        print(f"impasto: error: {r['error']}", file=sys.stderr)
    print(f"{len(rows) - len(bad)} of {len(rows)} images stylized into {a.output}")
    return 2 if bad or pl.errors else 0


if __name__ == "__main__":
    sys.exit(main())
