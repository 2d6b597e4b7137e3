"""Measure winnow's explainer checks: IG attribution error, EDDA alignment, latent counterfactuals.

Usage (defaults finish in roughly 10-15 minutes on a shared 2-core CPU)::

    .venv/bin/python benchmarks/eval_explain.py --out results/eval_explain.json

Sections
--------
1. IG attribution error (Cui & Fan): per baseline, the completeness gap
   ``|sum(attr) - (f_c(x) - f_c(b))|`` of the label's logit at fixed step counts (median,
   absolute and relative to ``|f_c(x) - f_c(b)|``), and the steps the doubling schedule needs for
   ``gap <= 1e-2 |f_c(x) - f_c(b)| + 1e-4``. The "default" baseline is the mean training image of
   the model's runner-up class (the stand-in for a scorer's suggested label). Digits (CNN, all
   1,347 training images) and a Fashion-MNIST subset (CNN).
2. EDDA alignment: models trained with no augmentation, EDDA, and the random-occlusion control
   (same copies and targets, random pixels), ``--seeds`` seeds each; on the test split the
   confidence drop of the label when the top-10% IG-salient pixels are occluded, versus random and
   least-salient pixels, plus test accuracy.
3. Counterfactuals on the Fashion-MNIST subset: a VAE trained on the training subset, latent
   search toward the runner-up class and toward a random other class (validity, latent / pixel
   distances), and per-class contrastive sufficiency / necessity of the latent class directions.

Writes one JSON with the settings, data sizes, timings and every figure, and prints tables.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from winnow.tasks.data.sources import load_digits, load_fashion_mnist
from winnow.tasks.explainers.baselines import make_baseline
from winnow.tasks.explainers.counterfactual import class_directions, contrastive_scores, latent_counterfactual
from winnow.tasks.explainers.edda import EDDAConfig, alignment_drops, ig_saliency, resolve_fill, train_with_edda
from winnow.tasks.explainers.ig import integrated_gradients, steps_for_tolerance
from winnow.tasks.explainers.vae import train_vae
from winnow.tasks.models import TrainConfig, build_model, predict_logits, train_model
from winnow.tasks.models.training import accuracy

CPU = torch.device("cpu")
IG_BASELINES = ("black", "mean", "blur", "uniform", "default")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def split(ds):
    tr = ds.split == "train"
    return (torch.tensor(ds.x[tr]), torch.tensor(ds.label[tr]), torch.tensor(ds.x[~tr]), torch.tensor(ds.label[~tr]))


@torch.no_grad()
def runner_up(model, x, y) -> torch.Tensor:
    """The most likely class other than the label: the stand-in for a scorer's suggested label."""
    model.eval()
    logits = torch.cat([model(x[i:i + 1024]) for i in range(0, len(x), 1024)])
    logits[torch.arange(len(y)), y] = -float("inf")
    return logits.argmax(1)


def ig_section(name, model, xtr, ytr, x, y, sigma, fixed_steps, max_steps, rtol):
    contrast = runner_up(model, x, y)
    rows = {}
    for kind in IG_BASELINES:
        b = make_baseline(kind, x, train_x=xtr, train_y=ytr, num_classes=10, contrast=contrast, sigma=sigma, seed=0)
        row = {}
        for s in fixed_steps:
            res = integrated_gradients(model, x, b, y, steps=s)
            gap, delta = res.gap.numpy(), res.delta.abs().numpy()
            row[f"gap_median@{s}"] = float(np.median(gap))
            row[f"relgap_median@{s}"] = float(np.median(gap / np.maximum(delta, 1e-12)))
        search = steps_for_tolerance(model, x, b, y, rtol=rtol, atol=1e-4, start=4, max_steps=max_steps)
        st = search.steps[search.converged]
        row.update({
            "delta_median": float(np.median(np.abs(search.delta))),
            "steps_median": float(np.median(st)) if len(st) else float("nan"),
            "steps_p90": float(np.percentile(st, 90)) if len(st) else float("nan"),
            "steps_max": int(st.max()) if len(st) else -1,
            "converged": float(search.converged.mean()),
        })
        rows[kind] = row
        log(f"  IG {name} {kind}: {row}")
    # Layer IG (first conv block's ReLU) with the default baseline.
    b = make_baseline("default", x, train_x=xtr, train_y=ytr, num_classes=10, contrast=contrast)
    search = steps_for_tolerance(model, x, b, y, rtol=rtol, atol=1e-4, start=4, max_steps=max_steps, layer="body.1")
    st = search.steps[search.converged]
    rows["default@layer body.1"] = {"delta_median": float(np.median(np.abs(search.delta))),
                                    "steps_median": float(np.median(st)) if len(st) else float("nan"),
                                    "steps_p90": float(np.percentile(st, 90)) if len(st) else float("nan"),
                                    "steps_max": int(st.max()) if len(st) else -1,
                                    "converged": float(search.converged.mean())}
    return rows


def edda_section(name, kind, shape, xtr, ytr, xte, yte, cfg, seeds, n_align, k, ig_steps):
    fill = resolve_fill("mean", xtr)
    xa, ya = xte[:n_align], yte[:n_align]
    out = {}
    for mode in ("none", "edda", "random"):
        per_seed = []
        for seed in seeds:
            t0 = time.time()
            res = train_with_edda(lambda: build_model(kind, shape, 10), xtr, ytr,
                                  TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed),
                                  EDDAConfig(mode=mode), device=CPU)
            train_s = time.time() - t0
            sal = ig_saliency(res.model, xa, ya, fill, steps=ig_steps)
            al = alignment_drops(res.model, xa, ya, sal, fill, k=k, seed=seed).summary()
            al.update(test_accuracy=accuracy(res.model, xte, yte), train_seconds=train_s, seed=seed)
            per_seed.append(al)
            log(f"  EDDA {name} {mode} seed {seed}: acc {al['test_accuracy']:.4f} drop top/rand/least "
                f"{al['drop_top']:.4f}/{al['drop_random']:.4f}/{al['drop_least']:.4f} ({train_s:.0f}s)")
        keys = ["test_accuracy", "confidence", "drop_top", "drop_random", "drop_least", "alignment", "top_minus_least"]
        out[mode] = {"per_seed": per_seed,
                     "mean": {kk: float(np.mean([p[kk] for p in per_seed])) for kk in keys},
                     "std": {kk: float(np.std([p[kk] for p in per_seed])) for kk in keys}}
    return out


def cf_section(model, xtr, ytr, xte, yte, n_cf, vae_epochs, latent, strengths, n_scores, seed):
    t0 = time.time()
    vres = train_vae(xtr, latent_dim=latent, epochs=vae_epochs, seed=seed)
    vae = vres.vae
    with torch.no_grad():
        recon_acc = float((predict_logits(model, vae(xte[:2000])).argmax(1) == yte[:2000]).float().mean())
    log(f"  VAE: {time.time() - t0:.0f}s, final loss {vres.loss[-1]:.1f}, classifier accuracy on reconstructions {recon_acc:.3f}")
    out = {"vae": {"latent_dim": latent, "epochs": vae_epochs, "final_loss": vres.loss[-1],
                   "classifier_accuracy_on_reconstructions": recon_acc, "train_seconds": time.time() - t0}}
    x, y = xte[:n_cf], yte[:n_cf]
    gen = torch.Generator().manual_seed(seed)
    targets = {"runner_up": runner_up(model, x, y),
               "random_other": (y + torch.randint(1, 10, (len(y),), generator=gen)) % 10}
    for tname, tgt in targets.items():
        t0 = time.time()
        cf = latent_counterfactual(model, vae, x, tgt, beta=0.05, lr=0.05, max_iter=200)
        s = cf.summary()
        s["seconds"] = time.time() - t0
        s["per_target_class_validity"] = [float(cf.success[cf.target == c].mean()) if (cf.target == c).any()
                                          else float("nan") for c in range(10)]
        out[f"search_{tname}"] = s
        log(f"  CF {tname}: {s}")
    dirs = class_directions(vae, xtr, ytr, 10)
    for lam in strengths:
        sc = contrastive_scores(model, vae, xte[:n_scores], yte[:n_scores], 10, strength=lam, directions=dirs)
        out[f"contrastive@{lam}"] = {**sc.summary(), "sufficiency": sc.sufficiency.tolist(),
                                     "necessity": sc.necessity.tolist(), "n_sufficiency": sc.n_sufficiency.tolist(),
                                     "n_necessity": sc.n_necessity.tolist()}
        log(f"  contrastive lam={lam}: {sc.summary()}")
    return out


def print_tables(results):
    if results["ig"]:
        print("\n== IG attribution error (label logit; rel = gap / |f(x) - f(b)|) ==")
    for ds, rows in results["ig"].items():
        print(f"-- {ds} (n={results['sizes'][ds]['ig_samples']})")
        cols = [c for c in next(iter(rows.values())) if c.startswith(("gap_median", "relgap_median"))]
        print(f"{'baseline':24s}" + "".join(f"{c:>20s}" for c in cols)
              + f"{'|delta| med':>12s}{'steps med':>10s}{'p90':>6s}{'max':>6s}{'conv':>6s}")
        for kind, r in rows.items():
            print(f"{kind:24s}" + "".join(f"{r.get(c, float('nan')):20.2e}" for c in cols)
                  + f"{r['delta_median']:12.3f}{r['steps_median']:10.0f}{r['steps_p90']:6.0f}{r['steps_max']:6d}{r['converged']:6.2f}")
    if results["edda"]:
        print("\n== EDDA alignment (test split; confidence drop of p(label) with top-k / random / least-salient occluded) ==")
    for ds, modes in results["edda"].items():
        print(f"-- {ds}")
        print(f"{'mode':8s}{'acc':>14s}{'conf':>8s}{'drop top':>16s}{'drop rand':>16s}{'drop least':>12s}{'align':>16s}")
        for mode, r in modes.items():
            m, s = r["mean"], r["std"]
            print(f"{mode:8s}{m['test_accuracy']:8.4f}±{s['test_accuracy']:.3f}{m['confidence']:8.3f}"
                  f"{m['drop_top']:10.4f}±{s['drop_top']:.3f}{m['drop_random']:10.4f}±{s['drop_random']:.3f}"
                  f"{m['drop_least']:12.4f}{m['alignment']:10.4f}±{s['alignment']:.3f}")
    cf = results["counterfactual"]
    if not cf:
        return
    print("\n== Counterfactuals (Fashion-MNIST) ==")
    for key in ("search_runner_up", "search_random_other"):
        r = cf[key]
        print(f"{key:22s} validity {r['validity']:.3f}  latent med {r['latent_distance_median']:.3f}  "
              f"pixel med {r['pixel_distance_median']:.3f}  input med {r['input_distance_median']:.3f}  iters med {r['iterations_median']:.0f}")
    for key, r in cf.items():
        if key.startswith("contrastive"):
            print(f"{key:22s} sufficiency mean {r['sufficiency_mean']:.3f} (min {r['sufficiency_min']:.3f})  "
                  f"necessity mean {r['necessity_mean']:.3f} (min {r['necessity_min']:.3f})")
            print(f"{'':22s} per class S {np.round(r['sufficiency'], 2).tolist()}")
            print(f"{'':22s} per class N {np.round(r['necessity'], 2).tolist()}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("eval_explain.json"))
    p.add_argument("--fmnist-limit", type=int, default=10000, help="Fashion-MNIST training subset size")
    p.add_argument("--fmnist-epochs", type=int, default=3, help="epochs of the Fashion-MNIST CNN")
    p.add_argument("--fmnist-edda-model", default="mlp", choices=["mlp", "cnn"],
                   help="model for the Fashion-MNIST EDDA runs (the CNN costs ~20x more per run)")
    p.add_argument("--fmnist-edda-epochs", type=int, default=5)
    p.add_argument("--digits-epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ig-samples", type=int, default=48, help="test samples per dataset for the IG checks")
    p.add_argument("--ig-max-steps", type=int, default=512)
    p.add_argument("--align-samples", type=int, default=1000)
    p.add_argument("--cf-samples", type=int, default=200)
    p.add_argument("--score-samples", type=int, default=2000)
    p.add_argument("--vae-epochs", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is fastest on an oversubscribed shared CPU")
    p.add_argument("--skip", nargs="*", default=[], choices=["ig", "edda", "cf"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    results: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "sizes": {}, "ig": {}, "edda": {}, "counterfactual": {}, "seconds": {}}

    def save() -> None:
        # Written after every section so a long run that is cut short still leaves its figures.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=float))

    log("loading data")
    dxtr, dytr, dxte, dyte = split(load_digits())
    fxtr, fytr, fxte, fyte = split(load_fashion_mnist(limit=args.fmnist_limit))
    results["sizes"]["digits"] = {"train": len(dxtr), "test": len(dxte), "ig_samples": min(args.ig_samples, len(dxte))}
    results["sizes"]["fashion-mnist"] = {"train": len(fxtr), "test": len(fxte), "ig_samples": min(args.ig_samples, len(fxte)),
                                         "align_samples": min(args.align_samples, len(fxte)),
                                         "cf_samples": min(args.cf_samples, len(fxte)),
                                         "score_samples": min(args.score_samples, len(fxte))}

    t0 = time.time()
    log("training classifiers (CNN) for IG and counterfactuals")
    dcnn = train_model(lambda: build_model("cnn", (1, 8, 8), 10), dxtr, dytr,
                       TrainConfig(epochs=args.digits_epochs, seed=0), device=CPU, keep_checkpoints=False).model
    fcnn = train_model(lambda: build_model("cnn", (1, 28, 28), 10), fxtr, fytr,
                       TrainConfig(epochs=args.fmnist_epochs, seed=0), device=CPU, keep_checkpoints=False).model
    results["classifiers"] = {"digits_cnn_test_accuracy": accuracy(dcnn, dxte, dyte),
                              "fmnist_cnn_test_accuracy": accuracy(fcnn, fxte, fyte)}
    results["seconds"]["classifiers"] = time.time() - t0
    save()
    log(f"  {results['classifiers']}")

    if "ig" not in args.skip:
        t0 = time.time()
        n = args.ig_samples
        # float64 copies so that the gap reflects quadrature error, not float32 rounding.
        results["ig"]["digits"] = ig_section("digits", dcnn.double(), dxtr.double(), dytr, dxte[:n].double(), dyte[:n],
                                             1.0, (16, 64), args.ig_max_steps, 1e-2)
        results["ig"]["fashion-mnist"] = ig_section("fashion-mnist", fcnn.double(), fxtr.double(), fytr, fxte[:n].double(),
                                                    fyte[:n], 2.0, (16, 64), args.ig_max_steps, 1e-2)
        dcnn.float(), fcnn.float()
        results["seconds"]["ig"] = time.time() - t0
        save()

    if "edda" not in args.skip:
        t0 = time.time()
        results["edda"]["digits (cnn)"] = edda_section(
            "digits", "cnn", (1, 8, 8), dxtr, dytr, dxte, dyte, TrainConfig(epochs=args.digits_epochs),
            args.seeds, args.align_samples, 0.1, 32)
        results["edda"][f"fashion-mnist ({args.fmnist_edda_model})"] = edda_section(
            "fashion-mnist", args.fmnist_edda_model, (1, 28, 28), fxtr, fytr, fxte, fyte,
            TrainConfig(epochs=args.fmnist_edda_epochs), args.seeds, args.align_samples, 0.1, 32)
        results["seconds"]["edda"] = time.time() - t0
        save()

    if "cf" not in args.skip:
        t0 = time.time()
        results["counterfactual"] = cf_section(fcnn, fxtr, fytr, fxte, fyte, args.cf_samples, args.vae_epochs,
                                               args.latent_dim, (0.5, 1.0, 2.0), args.score_samples, 0)
        results["seconds"]["counterfactual"] = time.time() - t0
        save()
    results["seconds"]["total"] = time.time() - t_start

    save()
    print_tables(results)
    log(f"wrote {args.out} ({results['seconds']['total']:.0f}s)")


if __name__ == "__main__":
    main()
