"""Speed of gradient-based self-influence on Fashion-MNIST (issue 3).

For each model (MLP, CNN: ``build_model(kind, (1, 28, 28), 10)``) and every saved checkpoint,
time on the same ``n`` training samples:

* ``tracin``            winnow, full model (one batched forward + backward per checkpoint)
* ``vmap reference``    torch.func ``vmap(grad)`` per-sample gradients, full model, same math;
                        timed on ``--ref-n`` samples and extrapolated linearly to ``n`` when
                        ``--ref-n < n`` (the output says so)
* ``captum TracInCPFast``  Captum's last-layer TracIn ``self_influence`` (weights only)
* ``forward+backward only``  the batched forward + backward to the layer outputs with no norm
                        computed: the floor of any exact method (vmap / this bounds the speed-up)
* ``tracin-last``       winnow, last layer (weights + bias)
* ``influence last``    winnow exact last-layer influence (final checkpoint)
* ``influence ekfac``   winnow EK-FAC full-model influence (fit + score, final checkpoint)
* ``representer``       if registered

Each time is the median of ``--repeats`` runs and is also expressed in units of one training
epoch. Two bounds from arithmetic close the table: the least FLOPs any exact full-model TracIn
must spend on the model (``exact_tracin_flops``) at this core's best float32 GEMM rate, which
caps the speed-up any exact method can reach over the vmap reference here; and that least work
as a multiple of one forward pass, the cost of a last-layer method like TracInCPFast.
Cross-checks are printed too: winnow tracin vs the vmap reference on the reference subset (max
relative difference), winnow last-layer weight-only TracIn vs Captum.

Checkpoints: by default ``--epochs`` (3) epochs of real training with
``winnow.tasks.models.train_model`` (SGD lr 0.05, batch 128) and the epoch time is measured from
that run; ``--random-init`` instead uses ``--epochs`` randomly initialised models as checkpoints
(saves the training time; the epoch time is then measured on one extra epoch).

Peak RSS: the process's ``ru_maxrss`` after each model, and a per-method peak sampled from
/proc/self/statm every 5 ms while the method runs.

Usage::

    python benchmarks/bench_influence.py --n 60000 --repeats 3 --models mlp,cnn --out bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time

import numpy as np
import torch
from torch import nn

from winnow.tasks.data.sources import load_fashion_mnist
from winnow.tasks.models import TrainConfig, build_model
from winnow.tasks.models.training import Checkpoint, train_model
from winnow.tasks.scorers import TrainingContext, available, get_scorer
from winnow.tasks.scorers.gradients import ce_residual, iter_layer_signals, trainable_layers, vmap_per_sample_sq_norms
from winnow.tasks.scorers.influence import self_influence
from winnow.tasks.scorers.tracin import tracin_self_influence

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRSS:
    """Samples the resident set size in a thread; ``peak`` in bytes."""

    def __enter__(self):
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def timed(fn, repeats: int):
    """(median seconds, per-run seconds, peak RSS bytes, last result)."""
    times, peak, result = [], 0, None
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        peak = max(peak, mem.peak)
    return statistics.median(times), times, peak, result


def make_checkpoints(kind, x, y, args):
    factory = lambda: build_model(kind, (1, 28, 28), 10)  # noqa: E731
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=0.05, seed=0)
    if args.random_init:
        ckpts = []
        for t in range(args.epochs):
            torch.manual_seed(1000 + t)
            ckpts.append(Checkpoint(t + 1, cfg.lr, {k: v.clone() for k, v in factory().state_dict().items()}))
        t0 = time.perf_counter()
        train_model(factory, x, y, TrainConfig(epochs=1, batch_size=128, lr=0.05), keep_checkpoints=False)
        epoch_s = time.perf_counter() - t0
        return factory, cfg, ckpts, epoch_s, "random-init"
    stamps = [time.perf_counter()]
    result = train_model(factory, x, y, cfg, on_epoch=lambda e, loss: stamps.append(time.perf_counter()))
    epoch_s = statistics.median(np.diff(stamps))
    return factory, cfg, result.checkpoints, epoch_s, f"trained {args.epochs} epochs (final loss {result.train_loss[-1]:.3f})"


def load(factory, ckpt):
    model = factory()
    model.load_state_dict(ckpt.state)
    return model.eval()


def captum_self_influence(factory, ckpts, x, y, batch_size):
    from captum.influence import TracInCPFast
    from torch.utils.data import DataLoader, TensorDataset

    model = factory().eval()
    by_name = {f"ckpt{t}": c for t, c in enumerate(ckpts)}

    def load_ckpt(m, name):
        m.load_state_dict(by_name[name].state)
        return by_name[name].lr

    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    tracer = TracInCPFast(model, model.head, loader, list(by_name), checkpoints_load_func=load_ckpt,
                          loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=batch_size)
    return tracer.self_influence(loader, outer_loop_by_checkpoints=True).detach().double().numpy()


def exact_tracin_flops(model, sample_shape) -> tuple[float, float]:
    """FLOPs per sample and checkpoint that any exact full-model TracIn must spend on ``model``,
    and the FLOPs of its forward pass alone (what a last-layer method such as Captum's
    TracInCPFast spends).

    Counted from the layer shapes (2 FLOPs per multiply-add): the forward pass of every
    Linear/Conv layer, the input-gradient half of the backward pass for every such layer but the
    first (no gradient w.r.t. the data is needed), and the cheaper exact form of each layer's
    per-sample weight-gradient norm (a linear layer's ‖a‖²‖g‖² is O + I; a convolution's is
    min(P·O·I, P²·(O + I)) per group). Element-wise layers (ReLU, pooling, softmax) are free
    here, so the figure is a lower bound.
    """
    counts = []

    def hook(module, inputs, output):
        groups = getattr(module, "groups", 1)
        o = module.out_channels // groups if isinstance(module, (nn.Conv1d, nn.Conv2d)) else module.out_features
        i = module.weight[0].numel()
        positions = output[0].numel() // (o * groups)
        matmul = positions * o * i * groups
        norm = (o + i) if positions == 1 else min(positions * o * i, positions ** 2 * (o + i)) * groups
        counts.append((matmul, norm))

    handles = [m.register_forward_hook(hook) for m in trainable_layers(model)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *sample_shape))
    finally:
        for h in handles:
            h.remove()
    forward = sum(m for m, _ in counts)
    backward = sum(m for m, _ in counts[1:])
    return 2.0 * (forward + backward + sum(n for _, n in counts)), 2.0 * forward


def gemm_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """The best FLOP rate of a float32 ``size³`` matrix product on the current torch threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(timed(lambda: a @ b, 1)[0] for _ in range(repeats))
    return 2.0 * size ** 3 / best


def bench_model(kind, x, y, args, report):
    print(f"\n=== {kind}: preparing checkpoints ...", flush=True)
    factory, cfg, ckpts, epoch_s, how = make_checkpoints(kind, x, y, args)
    models = [load(factory, c) for c in ckpts]
    lrs = [c.lr for c in ckpts]
    n = len(x)
    ref_n = min(n, args.ref_n)
    rows = {}
    checks = {}

    def add(name, fn, scale=1.0, repeats=args.repeats, note=""):
        med, runs, peak, res = timed(fn, repeats)
        rows[name] = {"seconds": med * scale, "measured_seconds": med, "runs": runs, "scale": scale,
                      "peak_rss_mib": peak / 2**20, "epochs_equiv": med * scale / epoch_s, "note": note}
        print(f"  {name:<22s} {med * scale:9.2f} s{'  (extrapolated x%.1f)' % scale if scale != 1 else ''}"
              f"  peak RSS {peak / 2**20:7.0f} MiB", flush=True)
        return res

    bs = args.batch_size
    ours = add("tracin (full)", lambda: tracin_self_influence(models, lrs, x, y, layers="all", batch_size=bs))
    skip = {k.strip() for k in args.skip.split(",") if k.strip()}
    if "vmap" not in skip:
        ref_fn = lambda: sum(lr * vmap_per_sample_sq_norms(m, x[:ref_n], y[:ref_n], batch_size=args.ref_batch)  # noqa: E731
                             for m, lr in zip(models, lrs))
        ref = add("vmap reference (full)", ref_fn, scale=n / ref_n,
                  repeats=max(1, min(args.repeats, args.ref_repeats)),
                  note=f"timed on {ref_n} samples, scaled linearly to {n}" if ref_n < n else "")
        checks["tracin_vs_vmap_max_rel_diff"] = float(np.max(np.abs(ours[:ref_n] / ref - 1)))
    # The floor for any exact method: the batched forward + backward to the layer outputs,
    # with no norm computed. vmap / this is the largest speed-up exact norms could reach.
    add("forward+backward only", lambda: [None for m in models for _ in iter_layer_signals(
        m, x, lambda logits, idx: ce_residual(logits, y[idx]).unsqueeze(0), trainable_layers(m), bs)],
        note="no norms: the floor of an exact method")
    last = add("tracin-last", lambda: tracin_self_influence(models, lrs, x, y, layers="head", batch_size=bs))
    if "captum" not in skip:
        cap = add("captum TracInCPFast (last)", lambda: captum_self_influence(factory, ckpts, x, y, bs))
        for m in models:  # Captum's last-layer TracIn has no bias term: compare like with like
            m.head.bias.requires_grad_(False)
        last_w = tracin_self_influence(models, lrs, x, y, layers="head", batch_size=bs)
        for m in models:
            m.head.bias.requires_grad_(True)
        checks["tracin_last_weights_vs_captum_max_rel_diff"] = float(np.max(np.abs(last_w / cap - 1)))
        checks["tracin_last_bias_share_median"] = float(np.median((last - last_w) / last))
    add("influence (last, exact)", lambda: self_influence(models[-1], x, y, variant="last", batch_size=bs))
    if "ekfac" not in skip:
        fit_n = args.ekfac_fit_samples if args.ekfac_fit_samples and args.ekfac_fit_samples < n else None
        add("influence (ekfac, full)", lambda: self_influence(models[-1], x, y, variant="ekfac", batch_size=bs,
                                                              fisher="mc", fit_samples=fit_n),
            note=f"factors fitted on {fit_n} of {n} samples" if fit_n else "factors fitted on all samples")
    if "representer" in available() and "representer" not in skip:
        ids = np.array([str(i) for i in range(n)])
        # a fresh context per run: scorers may cache on it, and a cache hit is not a timing
        add("representer", lambda: get_scorer("representer")(
            TrainingContext(x, y, 10, factory, ckpts, cfg, ids, device=torch.device("cpu"))))

    t_ours = rows["tracin (full)"]["seconds"]
    per_sample, forward = exact_tracin_flops(models[0], tuple(x.shape[1:]))
    summary = {"exact_over_forward_flops": per_sample / forward}
    if "vmap reference (full)" in rows:
        summary["speedup_vs_vmap"] = rows["vmap reference (full)"]["seconds"] / t_ours
        summary["speedup_bound_vs_vmap"] = (rows["vmap reference (full)"]["seconds"]
                                            / rows["forward+backward only"]["seconds"])
        # the same bound from arithmetic: the least work of an exact method at this core's best
        # matrix-product rate (no exact implementation can go faster on this machine)
        flops = per_sample * n * len(models)
        peak = gemm_peak_flops()
        summary["exact_tflops"] = flops / 1e12
        summary["gemm_peak_gflops"] = peak / 1e9
        summary["seconds_at_gemm_peak"] = flops / peak
        summary["speedup_bound_at_gemm_peak"] = rows["vmap reference (full)"]["seconds"] / (flops / peak)
    if "captum TracInCPFast (last)" in rows:
        summary["ratio_to_captum_last"] = t_ours / rows["captum TracInCPFast (last)"]["seconds"]
        # FLOPs per second each side achieves: the last-layer method is one forward pass
        scale = n * len(models) / 1e9
        summary["tracin_gflops"] = per_sample * scale / t_ours
        summary["captum_last_gflops"] = forward * scale / rows["captum TracInCPFast (last)"]["seconds"]
    report["models"][kind] = {"checkpoints": how, "n_checkpoints": len(ckpts), "epoch_seconds": epoch_s,
                              "rows": rows, "checks": checks, "summary": summary,
                              "ru_maxrss_mib_after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print_table(kind, report["models"][kind], n)


def print_table(kind, rep, n):
    print(f"\n{kind.upper()}  n={n}  checkpoints: {rep['n_checkpoints']} ({rep['checkpoints']})  "
          f"one training epoch: {rep['epoch_seconds']:.2f} s")
    print(f"  {'method':<28s}{'seconds':>10s}{'x epoch':>9s}{'peak RSS MiB':>14s}  note")
    for name, r in rep["rows"].items():
        print(f"  {name:<28s}{r['seconds']:10.2f}{r['epochs_equiv']:9.2f}{r['peak_rss_mib']:14.0f}  {r['note']}")
    s = rep["summary"]
    if "speedup_vs_vmap" in s:
        print(f"  tracin speed-up vs vmap reference: {s['speedup_vs_vmap']:.1f}x (target >= 30x: "
              f"{'met' if s['speedup_vs_vmap'] >= 30 else 'NOT met'}); bound for exact norms "
              f"(vmap / forward+backward only): {s['speedup_bound_vs_vmap']:.1f}x")
        print(f"  least exact work {s['exact_tflops']:.2f} TFLOP at this core's float32 GEMM peak "
              f"{s['gemm_peak_gflops']:.0f} GFLOP/s = {s['seconds_at_gemm_peak']:.1f} s: no exact method "
              f"can beat vmap by more than {s['speedup_bound_at_gemm_peak']:.1f}x here")
    if "ratio_to_captum_last" in s:
        print(f"  tracin time / captum last-layer time: {s['ratio_to_captum_last']:.2f} (target <= 2: "
              f"{'met' if s['ratio_to_captum_last'] <= 2 else 'NOT met'}); least exact work = "
              f"{s['exact_over_forward_flops']:.2f}x one forward pass; achieved {s['tracin_gflops']:.0f} GFLOP/s "
              f"(tracin) vs {s['captum_last_gflops']:.0f} GFLOP/s (captum forward)")
    for k, v in rep["checks"].items():
        print(f"  check {k}: {v:.2e}")
    print(f"  process peak RSS so far (ru_maxrss): {rep['ru_maxrss_mib_after']:.0f} MiB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60000, help="training samples (default 60000 = all)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is reported")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--epochs", type=int, default=3, help="checkpoints (= training epochs)")
    ap.add_argument("--random-init", action="store_true", help="random-init checkpoints instead of training")
    ap.add_argument("--ref-n", type=int, default=4096, help="samples the vmap reference is timed on")
    ap.add_argument("--ref-repeats", type=int, default=1, help="timed runs of the vmap reference")
    # Defaults: each method's fastest batch size on this machine (one thread, 1,024-8,192 FMNIST
    # samples): vmap 16 (CNN 1.11 s at 16 vs 1.26 at 8 and 2.44 at 32 per 1,024; MLP 0.35 s at 8-16
    # vs 0.58 at 64), winnow and Captum 64-128 (Captum CNN 3.3 s at 128 vs 4.7 at 512 per 8,192).
    ap.add_argument("--ref-batch", type=int, default=16, help="vmap reference batch size")
    ap.add_argument("--batch-size", type=int, default=128, help="batch size of winnow's methods and Captum's")
    ap.add_argument("--ekfac-fit-samples", type=int, default=0,
                    help="fit the EK-FAC factors on this many samples (0 = all; scores are always for all n)")
    ap.add_argument("--skip", default="", help="comma list of methods to skip: vmap,captum,ekfac,representer")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    ap.add_argument("--data", default=None, help="Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.epochs < 1 or args.ref_n < 1:
        ap.error("--n, --repeats, --epochs and --ref-n must be positive")
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    if not kinds or any(k not in ("mlp", "cnn") for k in kinds):
        ap.error(f"--models takes a comma list of mlp, cnn; got {args.models!r}")
    torch.set_num_threads(args.threads)

    ds = load_fashion_mnist(args.data, limit=None if args.n >= 60000 else args.n)
    train = ds.split == "train"
    x = torch.tensor(ds.x[train])[:args.n]
    y = torch.tensor(ds.label[train])[:args.n]
    del ds
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"n": len(x), "repeats": args.repeats, "threads": args.threads, "device": device,
              "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
              "argv": sys.argv[1:], "models": {}}
    print(f"Fashion-MNIST train n={len(x)}; device {device}; torch threads {args.threads}; "
          f"{report['machine']}", flush=True)
    for kind in kinds:
        bench_model(kind, x, y, args, report)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
