"""Time of the label-free patch encoding (``PatchDictionary.encode`` and its k-means fit, the cost of
``knn-aum-lf`` beyond ``knn-aum``) against the reference: the same features computed the plain way,
every patch cut out (``unfold``), contrast-normalised, whitened, its distances to the centroids,
32 images at a time (what winnow did before).

    python benchmarks/patch_encoding.py [--images 3000] [--shapes 1x28x28 3x32x32 1x8x8] [--repeats 3]

Images: uniform noise of each shape (the encoding's cost does not depend on the pixels). The
dictionary is fitted once per shape on the same images; both encodings run in this process, one
torch thread, alternately, ``--repeats`` times; the figure is the median ms per image and the ratio
winnow / reference. Both must give the same features (checked to 1e-3 of their scale). The k-means
assignment is timed the same way against the one-matrix ``argmin`` it replaced. Not a test.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from winnow.tasks.scorers.label_free import CONTRAST_FLOOR, PatchDictionary, _nearest  # noqa: E402


def reference_encode(d: PatchDictionary, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """The encoding as written before: patches unfolded, normalised and whitened one by one."""
    x = torch.as_tensor(images)
    ph, pw = d.positions
    rows, cols = np.divmod(np.arange(ph * pw), pw)
    pool = torch.as_tensor(np.eye(4, dtype=np.float32)[:, 2 * (rows >= (ph + 1) // 2) + (cols >= (pw + 1) // 2)])
    out = np.empty((len(x), d.width), dtype=np.float32)
    for start in range(0, len(x), batch):
        b = x[start:start + batch]
        p = torch.nn.functional.unfold(b, d.size, stride=d.stride).transpose(1, 2).reshape(-1, len(d.mean))
        p = p - p.mean(1, keepdim=True)
        p = p / torch.sqrt(p.var(1, keepdim=True, unbiased=False) + CONTRAST_FLOOR)
        u = (p - d.mean) @ d.zca
        dist = torch.addmm(d.centres_sq, u, d.centres.T, alpha=-2.0)
        dist = (dist + (u * u).sum(1, keepdim=True)).clamp(min=0).sqrt()
        dist = (dist.mean(1, keepdim=True) - dist).clamp(min=0)
        out[start:start + len(b)] = torch.matmul(pool, dist.reshape(len(b), ph * pw, -1)).reshape(len(b), -1).numpy()
    return out


def _median_ms(fn, repeats: int, per: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000 / per, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--shapes", nargs="+", default=["1x28x28", "3x32x32", "1x8x8"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"{args.images} images per shape, one torch thread; ms per image, median of {args.repeats}")
    print("| image shape | reference | winnow | ratio | same features |")
    print("|---|---|---|---|---|")
    for shape in args.shapes:
        dims = tuple(int(s) for s in shape.split("x"))
        images = rng.random((args.images,) + dims, dtype=np.float32)
        d = PatchDictionary(images)
        ref_times, our_times = [], []
        for _ in range(args.repeats):  # alternate, so a change of load hits both
            r, want = _median_ms(lambda: reference_encode(d, images), 1, len(images))
            o, got = _median_ms(lambda: d.encode(images), 1, len(images))
            ref_times.append(r)
            our_times.append(o)
        ref_ms, ours_ms = float(np.median(ref_times)), float(np.median(our_times))
        same = np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
        print(f"| {shape} | {ref_ms:.3f} | {ours_ms:.3f} | {ours_ms / ref_ms:.2f}× | {'yes' if same else 'NO'} |",
              flush=True)
    points = torch.as_tensor(rng.normal(size=(100_000, 36)).astype(np.float32))
    centres = points[:200].clone()
    squares = (centres * centres).sum(1)
    ref, want = _median_ms(lambda: torch.addmm(squares, points, centres.T, alpha=-2.0).argmin(1), args.repeats, 1)
    ours, got = _median_ms(lambda: _nearest(points, centres), args.repeats, 1)
    print(f"\nk-means assignment, 100,000 patches × 200 centroids (36-d): reference {ref:.0f} ms, winnow {ours:.0f} ms "
          f"({ours / ref:.2f}×), same: {'yes' if torch.equal(got, want) else 'NO'}")


if __name__ == "__main__":
    main()
