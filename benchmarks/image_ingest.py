"""Peak memory and time of reading encoded images (a Parquet column of PNG bytes), as ingest does
(decoded a row at a time into a spilled ``.npy``), against the reference: every image decoded
first, then stacked in memory (what winnow did before, and what a plain loop over PIL does).

    python benchmarks/image_ingest.py [--n 20000 100000] [--size 32]

For each N: writes N random RGB images (noise: PNG cannot shrink them much, like photos) to one
Parquet file, then reads it in a fresh process per mode and reports that process's peak resident
memory (``ru_maxrss``) and wall time. Not a test: about a minute at 10⁵ 32×32 images.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("reference: decode all, then stack", "winnow: a row at a time, spilled")


def _write(path: Path, n: int, size: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        blobs = []
        for _ in range(m):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
            blobs.append(buf.getvalue())
        table = pa.table({"id": [f"s{i}" for i in range(start, start + m)],
                          "label": (np.arange(start, start + m) % 10).astype(np.int64),
                          "image": pa.array(blobs, pa.binary())})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def _child(mode: int, path: str) -> dict:
    import resource

    t0 = time.perf_counter()
    if mode == 0:  # the reference: the column read whole, every image decoded, then stacked
        import pyarrow.parquet as pq

        from winnow.tasks.data.images import _as_row, open_image

        blobs = pq.read_table(path, columns=["image"]).column(0).to_pylist()
        images = [open_image(b, f"row {i}") for i, b in enumerate(blobs)]
        target = (images[0].height, images[0].width)
        out = np.empty((len(images), 3, *target), np.uint8)
        for i, im in enumerate(images):
            out[i] = _as_row(im, False, target)[0]
        checksum = int(out[:, :, ::7, ::7].sum())
    else:
        from winnow.tasks.data.tables import load_parquet

        with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as spill:
            ds = load_parquet(Path(path), spill_dir=Path(spill))
            # the peak of the read itself: summing the mapped pixels below maps the file's pages
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            checksum = int(np.asarray(ds.values[:, :, ::7, ::7]).sum())
        return {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(peak / 1024),
                "checksum": checksum}
    return {"wall_s": round(time.perf_counter() - t0, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "checksum": checksum}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(int(args.child[0]), args.child[1])))
        return
    print(f"{os.cpu_count()} CPUs, load {open('/proc/loadavg').read().split()[0]}; "
          f"{args.size}x{args.size} RGB PNG images of noise")
    print(f"{'N':>9} {'file MiB':>9} {'mode':36} {'wall s':>7} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory(prefix="winnow-images-") as tmp:
        for n in args.n:
            path = Path(tmp) / f"images-{n}.parquet"
            _write(path, n, args.size)
            sums = set()
            for mode, label in enumerate(MODES):
                out = subprocess.run([sys.executable, __file__, "--child", str(mode), str(path)],
                                     capture_output=True, text=True, timeout=3600)
                if out.returncode != 0:
                    raise SystemExit(f"{label} at N={n} failed:\n{out.stderr[-2000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                sums.add(r["checksum"])
                print(f"{n:9d} {path.stat().st_size / 2**20:9.0f} {label:36} {r['wall_s']:7.1f} "
                      f"{r['peak_rss_mib']:13d}", flush=True)
            if len(sums) != 1:
                raise SystemExit(f"N={n}: the two modes decoded different pixels")


if __name__ == "__main__":
    main()
