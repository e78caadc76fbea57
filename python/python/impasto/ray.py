"""Stylize a whole photo collection with Ray Data, on one machine or a cluster.

    python -m impasto.ray --style great_wave --input photos/ --output stylized/
    python -m impasto.ray --style great_wave --input s3://bucket/photos --output /mnt/shared/out \\
        --address auto --concurrency 16

The files are read as bytes (``ray.data.read_binary_files``: local folders, or any URI
pyarrow reaches: ``s3://``, ``gs://``, ``hdfs://``), decoded with impasto's own decoders, and
stylized by actors that each load the model once (:class:`Stylizer`); each actor writes its
results under ``--output`` with the input's relative name, atomically. An unreadable image
is reported and the rest are still done. ``--output`` must be a folder every worker can write
(a local folder on one machine; a shared file system on a cluster).
"""

import argparse
import os
import pathlib
import sys

EXTENSIONS = ["jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp"]


class Stylizer:
    """A Ray Data actor: the model is loaded once per actor; ``__call__`` stylizes a batch of
    ``{"bytes", "path"}`` rows and returns ``{"path", "output", "error"}`` rows."""

    def __init__(self, style, output, root, strength=1.0, preserve_color=False, max_size=None,
                 ext=None, threads=1):
        # Before impasto's thread pool starts: one actor, `threads` cores.
        os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, int(threads))))
        import impasto

        self._impasto = impasto
        self.model = impasto.Model(style)
        self.output = pathlib.Path(output)
        self.root = str(root).rstrip("/")
        self.opts = dict(strength=strength, preserve_color=preserve_color, max_size=max_size)
        self.ext = ext

    def target(self, path):
        rel = path[len(self.root):].lstrip("/") if path.startswith(self.root) else os.path.basename(path)
        rel = pathlib.Path(rel)
        if self.ext:
            rel = rel.with_suffix("." + self.ext.lstrip("."))
        return self.output / rel

    def __call__(self, batch):
        import numpy as np

        paths, outputs, errors = [], [], []
        for data, path in zip(batch["bytes"], batch["path"]):
            path = str(path)
            out, err = "", ""
            try:
                img = self._impasto.decode_image(bytes(data), path)
                dst = self.target(path)
                dst.parent.mkdir(parents=True, exist_ok=True)
                self._impasto.write_image(dst, self.model.stylize(img, **self.opts))
                out = str(dst)
            except (ValueError, self._impasto.ImpastoError, OSError) as e:
                err = str(e)
            paths.append(path)
            outputs.append(out)
            errors.append(err)
        return {"path": np.array(paths), "output": np.array(outputs), "error": np.array(errors)}


def stylize_dataset(style, input, output, strength=1.0, preserve_color=False, max_size=None,
                    ext=None, concurrency=None, threads_per_actor=1, batch_size=8):
    """Stylize every image under ``input`` (folder or URI) into ``output``; returns a list of
    ``{"path", "output", "error"}`` dicts, one per image (``error`` empty on success)."""
    import ray

    # Reading bytes is I/O: the read tasks ask for no CPU, so that actors holding every core
    # cannot starve them (with one CPU per actor on a small machine, they would wait forever).
    try:
        ds = ray.data.read_binary_files(
            input, include_paths=True, file_extensions=EXTENSIONS, num_cpus=0
        )
    except TypeError:  # Ray before the named remote parameters
        ds = ray.data.read_binary_files(
            input, include_paths=True, file_extensions=EXTENSIONS, ray_remote_args={"num_cpus": 0}
        )
    if concurrency is None:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        concurrency = max(1, cpus // max(1, threads_per_actor))
    out = ds.map_batches(
        Stylizer,
        fn_constructor_kwargs=dict(
            style=str(style), output=str(output), root=_root(input), strength=strength,
            preserve_color=preserve_color, max_size=max_size, ext=ext,
            threads=threads_per_actor,
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


def _root(input):
    # Ray reports local paths without a scheme and absolute.
    if "://" in str(input):
        return str(input).split("://", 1)[1]
    return str(pathlib.Path(input).resolve())


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m impasto.ray", description=__doc__.split("\n\n")[0])
    p.add_argument("--style", required=True, help="a built-in style name or a model file")
    p.add_argument("--input", required=True, help="a folder or a URI (s3://, gs://, ...)")
    p.add_argument("--output", required=True, help="the folder to write (shared on a cluster)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--preserve-color", action="store_true")
    p.add_argument("--max-size", type=int)
    p.add_argument("--ext", help="write this format (png, jpg, webp) instead of the input's")
    p.add_argument("--concurrency", type=int, help="actors (default: the cluster's CPUs / threads)")
    p.add_argument("--threads-per-actor", type=int, default=1)
    p.add_argument("--address", help="a running Ray cluster (`auto`); default: start one here")
    a = p.parse_args(argv)
    import ray

    ray.init(address=a.address, log_to_driver=False)
    rows = stylize_dataset(
        a.style, a.input, a.output, a.strength, a.preserve_color, a.max_size, a.ext,
        a.concurrency, a.threads_per_actor,
    )
    bad = [r for r in rows if r["error"]]
    for r in bad:
        print(f"impasto: error: {r['error']}", file=sys.stderr)
    print(f"{len(rows) - len(bad)} of {len(rows)} images stylized into {a.output}")
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
