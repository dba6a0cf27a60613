"""Which part of the training recipe keeps the smoke models off dSprites' mean-image plateau.

    python benchmarks/training_health.py [--seeds 0 1] [--steps 1000] [--workers 2]

Trains the smoke sweep's models (its data, widths, batch, learning rate and steps; one thread
each, ``--workers`` at a time) under four variants and prints, per variant, how many models
are healthy (``sweep.train.health.verdict``, the sweep's rules), their held-out ELBO against the
mean-image model and the share of the held-out pixel variance their reconstructions explain
(``recon_r2``):

  recipe          this code: the decoder starts at the mean image, anchored conditional priors
  no-offset       the decoder's output offset left at zero (the mean image must be learned)
  free-prior      p(z^i|z^{i+1}) with a free variance (the bounded posterior parameterisation)
  neither         both pieces off

The ablations swap one piece of ``models`` for the run (``set_mean_image`` not called; the
conditional prior's parameterisation replaced); nothing else differs. ``benchmarks/recon_r2.py``
trains the same runs and evaluates them along the way (``recon_r2`` after 0, 100, 300, ... steps).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

VARIANTS = ("recipe", "no-offset", "free-prior", "neither")
MODELS = [("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 6.0, 1), ("tcdlgm", 1.0, 2), ("tcdlgm", 6.0, 2),
          ("seatbelt", 1.0, 2), ("seatbelt", 6.0, 2)]


def run_one(job: tuple[str, str, float, int, int, int]) -> dict:
    variant, kind, beta, layers, seed, steps = job
    import torch

    import models.hierarchical as hierarchical
    from models import build_model
    from results.schema import TRAIN_ELBO
    from sweep.config import model_config_for
    from sweep.config.presets import smoke
    from sweep.config.trials import TrialSpec
    from sweep.train.evaluate import evaluate
    from sweep.train.health import verdict
    from sweep.train.trainable import cached_dataset, training_pixel_statistics

    torch.set_num_threads(1)
    cfg = smoke()
    if variant in ("free-prior", "neither"):
        hierarchical._conditional_prior = hierarchical._posterior   # the free, bounded variance
    data = cached_dataset("dsprites_generated", None, cfg.data.size, cfg.data.split_seed, cfg.data.held_out)
    mean, scale = training_pixel_statistics(data)
    torch.manual_seed(seed * 7919)
    trial = TrialSpec("dsprites_generated", kind, beta, layers, cfg.grid.z_dims[0], seed)
    model = build_model(model_config_for(trial, cfg.train, data))
    if variant in ("recipe", "free-prior"):
        model.set_mean_image(mean)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    generator = torch.Generator().manual_seed(seed * 1_000_003)
    started = time.perf_counter()
    for _ in range(steps):
        loss = model.objective(data.sample_batch(generator, cfg.train.batch_size)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    images = data.batch(data.evaluation_indices(cfg.train.eval_size, cfg.data.split_seed))
    row, _ = evaluate(model, images, mean, scale, noise_sigmas=[], noise_samples=1, batch_size=256, seed=seed)
    health, reason = verdict(row, model)
    return dict(variant=variant, kind=kind, beta=beta, layers=layers, seed=seed, health=health,
                held_out_elbo=row[TRAIN_ELBO], mean_image=row["elbo_mean_image"], recon_r2=row["recon_r2"],
                units=row["active_units"], reason=reason,
                at_bound=max(row["logvar_at_bound"]), seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=None, help="default: the smoke preset's")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from sweep.config.presets import smoke

    steps = args.steps or smoke().train.steps
    jobs = [(v, k, b, L, s, steps) for v in args.variants for s in args.seeds for (k, b, L) in MODELS]
    print(f"{len(jobs)} runs of {steps} steps (the smoke preset's data, widths, batch and lr), "
          f"{args.workers} at a time, 1 thread each")
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(run_one, jobs, chunksize=1)
    print(f"\n{'variant':11s} {'model':9s} {'beta':>4s} {'L':>2s} {'seed':>4s} {'health':9s} "
          f"{'ELBO':>8s} {'mean img':>8s} {'gain':>6s} {'R2':>6s} {'units':>8s} {'at bound':>8s}")
    for r in results:
        gain = (r["held_out_elbo"] - r["mean_image"]) / abs(r["mean_image"])
        print(f"{r['variant']:11s} {r['kind']:9s} {r['beta']:4g} {r['layers']:2d} {r['seed']:4d} {r['health']:9s} "
              f"{r['held_out_elbo']:8.1f} {r['mean_image']:8.1f} {gain:+6.0%} {r['recon_r2']:+6.3f} "
              f"{'/'.join(map(str, r['units'])):>8s} {r['at_bound']:8.0%}")
    print()
    for variant in args.variants:
        mine = [r for r in results if r["variant"] == variant]
        healthy = sum(r["health"] == "healthy" for r in mine)
        gains = sorted((r["held_out_elbo"] - r["mean_image"]) / abs(r["mean_image"]) for r in mine)
        r2 = sorted(r["recon_r2"] for r in mine)
        print(f"summary {variant}: {healthy}/{len(mine)} healthy, ELBO gain over the mean image "
              f"min {gains[0]:+.0%}, median {gains[len(gains) // 2]:+.0%}; recon_r2 min / median / max "
              f"{r2[0]:+.2f} / {statistics.median(r2):+.2f} / {r2[-1]:+.2f}")
        for r in mine:
            if r["health"] != "healthy":
                print(f"  {r['kind']} b={r['beta']:g} L={r['layers']} seed={r['seed']}: "
                      f"{r['health']}: {r['reason']}")


if __name__ == "__main__":
    main()
