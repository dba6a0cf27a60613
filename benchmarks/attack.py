"""Benchmark: the batched attack solver against the scipy L-BFGS-B reference, side by side.

Both solvers attack the same problems in one process, by default at the paper's batch: every
(pair, λ) of 10 pairs from the held-out split of the generated dSprites × 51 λ for each model and
mode (latent KL, output ELBO), both solvers stopping on their tolerances (maxiter 15000, scipy's
default), one ``attack_problems`` call per (model, mode): for the batched solver that is the
510 problems of one attack task.

Models: ``--checkpoints DIR`` loads every ``*.pt`` in DIR (e.g. the smoke sweep's
``<out>/checkpoints``; all of them are MLPs) and groups them by architecture; any architecture
in ``--architectures`` without a checkpoint gets one small model trained here for
``--train-steps`` Adam steps on the same dataset (so the benchmark runs on a fresh machine, and
the conv architecture is always covered).

The batched solver runs twice (``--starts``): with warm starts along each pair's λ path
(``AttackConfig.warm_start``, ``attacks.warm``: fewer evaluations per attack) and with every λ
started cold from d0 as the paper does and scipy here does. Both are scored against scipy's
cold starts, and a lower Δ is a stronger attack, so a warm start that finds a lower minimum is
within tolerance.

It prints two tables per maxiter:

* quality, per architecture and mode: the fraction of problems whose batched Δ is within
  ``Δ_scipy + rtol·|Δ_scipy| + atol`` (the issue's bar: >= 95%), and the median and worst of
  Δ_batched / Δ_scipy (bar: median <= 1.00). Δ is the attack's reported value: in output mode
  it is re-evaluated on fresh noise (``output_report_samples``), while the solvers minimise
  the objective on one fixed draw per problem, so the last two columns score that minimised
  objective the same way (in latent mode the two agree);
* speed, per architecture and mode: attacks/s of each solver (wall time of the whole
  ``attack_problems`` call) and their ratio (bar: >= 5x mlp, >= 3x conv), evaluations per
  attack, and the
  wall time per evaluation of one problem (solver work included: their ratio is the speed-up
  at equal evaluation counts), plus the batched solver on the GPU when one is present.

``--scipy-every k`` lets scipy solve every k-th problem only (one at a time, its attacks/s does
not depend on which), so the paper's 10 pairs x 51 λ fit in minutes; quality is compared on
those problems (default 17: 30 of 510). ``--show-misses`` lists every problem outside the
tolerance.

The floors (``--floors``) score scipy against itself with the same test: ``seed``, the same
problems with another seed (another random start; in output mode also other noise draws), and
``ulp``, the same problems and noise from the same start with every coordinate moved one float32
ulp towards 0. The ``ulp`` floor is how much of scipy's minimum is fixed by the problem rather
than by the last bit of its arithmetic: a solver whose float32 rounding differs from scipy's in
any way (another summation order, a batched model pass) cannot be expected to agree with scipy
more often than scipy agrees with itself one ulp away.

It ends with one line per architecture and mode for the configuration proposed as the default
(warm starts in ``--warm-modes``, by default latent only; cold in the others):
``summary <arch> <mode>: speed <X>x, within tolerance <Y>%, median ratio <Z>``,
the same for the other start (``warm start <arch> <mode>: ...``, ``cold start ...``) and
scipy's floor lines.

    python benchmarks/attack.py --checkpoints <out>/checkpoints      # healthy smoke models
    python benchmarks/attack.py                                      # trains its models
    python benchmarks/attack.py --checkpoints DIR --n-pairs 3 --n-lambdas 11 --maxiter 100
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attacks.config import AttackConfig  # noqa: E402
from attacks.metrics import lambda_grid, sample_pairs  # noqa: E402
from attacks.run import attack_problems  # noqa: E402
from attacks.solvers import SOLVERS, ScipyLBFGSB  # noqa: E402
from models import ModelConfig, build_model, load_checkpoint  # noqa: E402
from sweep.evaluate import (active_units, elbo_parts, logvar_at_bound,  # noqa: E402
                            mean_image_loglik, posteriors, recon_r2)
from sweep.health import verdict  # noqa: E402
from sweep.trainable import training_pixel_statistics  # noqa: E402

MODES = (("latent", "kl"), ("output", "elbo"))
STARTS = ("warm", "cold")   # the batched solver's runs (scipy, the reference, starts cold)
FLOORS = {"seed": "scipy with another seed", "ulp": "scipy from a start one ulp away"}


class UlpNudgedScipy(ScipyLBFGSB):
    """scipy started from d0 with every non-zero coordinate moved one ulp (of the model's
    dtype) towards 0: the same problem, noise and algorithm, only the start's last bit differs
    (the ``ulp`` floor). Towards 0 keeps the start in the box (it holds 0) and a coordinate on
    the bound d = 0 on it, so the first active set is the same."""

    name = "scipy-ulp"

    def solve(self, objective, d0, lower, upper, config, after=None):
        nudged = torch.nextafter(d0, torch.zeros_like(d0))
        return super().solve(objective, nudged, lower, upper, config, after)


# a solver name AttackConfig accepts, for the floor runs of this benchmark only
SOLVERS[UlpNudgedScipy.name] = UlpNudgedScipy


def load_models(folder: str | None, architectures: list[str],
                only: list[str] | None = None) -> dict[str, list[tuple[str, torch.nn.Module]]]:
    """{architecture: [(name, model)]} from the checkpoints in ``folder`` (those whose file
    name contains one of ``only``, if given)."""
    out: dict[str, list] = defaultdict(list)
    if folder:
        paths = [p for p in sorted(Path(folder).glob("*.pt"))
                 if not only or any(part in p.name for part in only)]
        if not paths:
            raise SystemExit(f"no *.pt checkpoints in {folder}" + (f" matching {only}" if only else ""))
        for path in paths:
            model, _, extra = load_checkpoint(path)
            arch = model.cfg.architecture
            if arch in architectures:
                out[arch].append((path.stem, model.eval()))
    return out


def train_model(arch: str, dataset, steps: int, seed: int = 0) -> torch.nn.Module:
    """A small VAE of ``arch`` (z 6, hidden 256, as the smoke sweep), ``steps`` Adam steps of
    batch 64 on the dataset's training split."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(kind="vae", architecture=arch, z_dim=6, layers=1,
                                    hidden_dim=256, dataset_size=len(dataset.train_indices)))
    model.set_mean_image(training_pixel_statistics(dataset)[0])   # as the sweep trains
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    train = dataset.train_indices
    model.train()
    for _ in range(steps):
        batch = dataset.batch(train[torch.randint(0, len(train), (64,), generator=g)].tolist())
        opt.zero_grad()
        model.objective(batch).loss.backward()
        opt.step()
    return model.eval()


def health(model, dataset) -> str:
    """The sweep's health verdict for ``model`` on 1,024 held-out images (a benchmark on a model
    that never left the mean-image plateau measures nothing)."""
    images = dataset.batch(dataset.evaluation_indices(1024, seed=0).tolist())
    with torch.no_grad():
        elbo = elbo_parts(model, images, 256)["elbo"]
        post = posteriors(model, images, 256)
    mean_image, scale = training_pixel_statistics(dataset)
    row = dict(elbo=elbo, active_units=active_units(post), logvar_at_bound=logvar_at_bound(post),
               elbo_mean_image=float(mean_image_loglik(mean_image, images, model.cfg.likelihood,
                                                       scale).mean()),
               recon_r2=recon_r2(model, images, mean_image, 256))
    state, reason = verdict(row, model)
    return f"{state}: {reason}"


def smoke_problems(dataset, n_pairs: int, n_lambdas: int):
    """The smoke protocol's problems: pair i at every λ, p = i·m + j (as run_attacks)."""
    pairs = sample_pairs(dataset.held_out_indices.tolist(), n_pairs, seed=0)
    lams = lambda_grid(n_lambdas)
    m = len(lams)
    src = dataset.batch([s for s, _ in pairs])
    tgt = dataset.batch([t for _, t in pairs])
    x, xt = src.repeat_interleave(m, 0), tgt.repeat_interleave(m, 0)
    lam = torch.tensor(lams * n_pairs, dtype=torch.float32)
    si = [s for s, _ in pairs for _ in range(m)]
    ti = [t for _, t in pairs for _ in range(m)]
    return x, xt, lam, si, ti


def within(new: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """The issue's quality test per problem: Δ_batched <= Δ_scipy + rtol·|Δ_scipy| + atol."""
    return new <= ref + rtol * np.abs(ref) + atol


def subset(problems, idx: np.ndarray):
    """The problems ``idx`` of ``smoke_problems``'s (x, x_target, λ, sources, targets)."""
    x, xt, lam, si, ti = problems
    t = torch.as_tensor(idx)
    return x[t], xt[t], lam[t], [si[i] for i in idx], [ti[i] for i in idx]


def run(model, problems, mode, sim, cfg, device="cpu", seed=0):
    x, xt, lam, si, ti = problems
    model = model.to(device)
    t0 = time.perf_counter()
    outcome = attack_problems(model, x.to(device), xt.to(device), lam.to(device), mode, sim,
                              cfg, si, ti, seed=seed)
    res, total = outcome.result, outcome.objective
    if device != "cpu":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    model.to("cpu")
    return total.double().cpu().numpy(), wall, res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default=None, help="folder of *.pt model files (smoke sweep)")
    ap.add_argument("--architectures", nargs="+", default=["mlp", "conv"])
    ap.add_argument("--only", nargs="+", help="checkpoints whose file name contains one of these")
    ap.add_argument("--train-steps", type=int, default=300,
                    help="Adam steps for a model trained here (no checkpoint of an architecture)")
    ap.add_argument("--n-pairs", type=int, default=10)
    ap.add_argument("--n-lambdas", type=int, default=51)
    ap.add_argument("--maxiter", type=int, nargs="+", default=[15000],
                    help="maxiter values to compare at (default config: 15000; smoke preset: 100)")
    ap.add_argument("--rtol", type=float, default=0.01)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a Ray attack task has 1 CPU)")
    ap.add_argument("--batch-history", type=int, default=None,
                    help="batched solver's L-BFGS memory (AttackConfig.batch_history; default: memory)")
    ap.add_argument("--scipy-every", type=int, default=17,
                    help="scipy solves every k-th problem only (it solves one at a time, so its "
                         "attacks/s does not depend on k); for the paper's 10 pairs x 51 λ")
    ap.add_argument("--warm-chain", type=int, default=AttackConfig.warm_chain,
                    help="λ per warm-start chain of the batched solver's warm runs "
                         "(AttackConfig.warm_chain)")
    ap.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS),
                    help="the batched solver's runs: cold (every λ from d0, the paper's protocol) "
                         "and/or warm (AttackConfig.warm_start)")
    ap.add_argument("--warm-modes", nargs="*", default=["latent"],
                    help="the modes whose 'summary' lines score the warm run (the configuration "
                         "proposed as the default: warm_start = these modes); the others score "
                         "the cold run")
    ap.add_argument("--floors", nargs="*", choices=list(FLOORS), default=list(FLOORS),
                    help="scipy's extra runs scored against its first (the 'floor' lines: how "
                         "well scipy agrees with itself under the same tolerance): 'seed' another "
                         "seed, 'ulp' the start moved by one float32 ulp")
    ap.add_argument("--no-floor", dest="floors", action="store_const", const=[],
                    help="no floor runs (as --floors with no value)")
    ap.add_argument("--show-misses", action="store_true",
                    help="print every problem outside the quality tolerance")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from sweep.data import load_dataset

    t0 = time.perf_counter()
    dataset = load_dataset("dsprites_generated", size=20000, seed=0, held_out=0.1)
    problems = smoke_problems(dataset, args.n_pairs, args.n_lambdas)
    models = load_models(args.checkpoints, args.architectures, args.only)
    for arch in args.architectures:
        if not models.get(arch):
            models[arch] = [(f"{arch}-vae-trained{args.train_steps}",
                             train_model(arch, dataset, args.train_steps))]
    gpu = torch.cuda.is_available()
    P = len(problems[0])
    # a seeded uniform sample: a stride would see only the λ at the same few grid positions
    # (every 17th of 10 x 51 problems is λ index 0, 17 or 34 of every pair)
    sample = np.sort(np.random.default_rng(0).choice(P, -(-P // args.scipy_every), replace=False))
    print(f"setup {time.perf_counter() - t0:.0f}s; {P} problems per (model, mode) = {args.n_pairs} "
          f"pairs x {args.n_lambdas} λ; torch threads={args.threads}; GPU: "
          f"{torch.cuda.get_device_name() if gpu else 'none'}")
    for arch in args.architectures:
        for name, model in models[arch]:
            print(f"  {arch} {name}: {health(model, dataset)}")

    # warm-up (first calls allocate and initialise kernels)
    warm = tuple(t[:2] if torch.is_tensor(t) else t[:2] for t in problems)
    for arch in args.architectures:
        for solver in ("scipy", "batched"):
            run(models[arch][0][1], warm, "latent", "kl", AttackConfig(solver=solver, maxiter=5))

    summaries, floors = [], []
    for maxiter in args.maxiter:
        quality, speed = [], []
        for arch in args.architectures:
            acc = defaultdict(lambda: defaultdict(list))
            for name, model in models[arch]:
                for mode, sim in MODES:
                    ref, t_ref, r_ref = run(model, subset(problems, sample), mode, sim,
                                            AttackConfig(solver="scipy", maxiter=maxiter))
                    # scipy's own reproducibility, scored the same way (module docstring)
                    for floor in args.floors:
                        solver, seed = ("scipy", 1) if floor == "seed" else (UlpNudgedScipy.name, 0)
                        again, _, r_again = run(model, subset(problems, sample), mode, sim,
                                                AttackConfig(solver=solver, maxiter=maxiter), seed=seed)
                        acc[mode][floor].append(again)
                        acc[mode][floor, "min"].append(r_again.objective)
                    acc[mode]["ref"].append(ref)
                    acc[mode]["ref_min"].append(r_ref.objective)
                    acc[mode]["t_ref"].append(t_ref / len(sample))     # seconds per attack
                    acc[mode]["ev_ref"].append(r_ref.evaluations.mean())
                    for start in args.starts:
                        cfg = AttackConfig(solver="batched", maxiter=maxiter,
                                           batch_history=args.batch_history,
                                           warm_start=(mode,) if start == "warm" else (),
                                           warm_chain=args.warm_chain)
                        new_all, t_new, r_new = run(model, problems, mode, sim, cfg)
                        # quality on the problems both solved; speed per attack of each
                        new = new_all[sample]
                        a = acc[mode, start]
                        if args.show_misses:
                            lam = problems[2].double().numpy()[sample]
                            miss = ~within(new, ref, args.rtol, args.atol)
                            for j in np.flatnonzero(miss):
                                p = sample[j]
                                print(f"    miss ({start}): problem {p} λ={lam[j]:.3g} "
                                      f"Δ_scipy={ref[j]:.6g} ({r_ref.evaluations[j]} evals, "
                                      f"{r_ref.messages[j][:24]}) Δ_batched={new[j]:.6g} "
                                      f"({r_new.evaluations[p]} evals, {r_new.messages[p][:24]})")
                        a["new"].append(new)
                        a["new_min"].append(r_new.objective[sample])
                        a["t_new"].append(t_new / P)
                        a["ev_new"].append(r_new.evaluations.mean())
                        if gpu:
                            _, t_gpu, _ = run(model, problems, mode, sim, cfg, "cuda")
                            a["t_gpu"].append(t_gpu / P)
                        ratio = (t_ref / len(sample)) / (t_new / P)
                        print(f"  [{arch} {name} {mode} maxiter={maxiter}] scipy {t_ref:.2f}s for "
                              f"{len(sample)}, batched {start} {t_new:.2f}s for {P} "
                              f"({ratio:.1f}x per attack)", flush=True)
            for start in args.starts:
                modes_run = [m for m, _ in MODES if (m, start) in acc]
                for mode in modes_run + ["all"]:
                    modes = modes_run if mode == "all" else [mode]
                    ref = np.concatenate([np.concatenate(acc[m]["ref"]) for m in modes])
                    new = np.concatenate([np.concatenate(acc[m, start]["new"]) for m in modes])
                    ok = within(new, ref, args.rtol, args.atol)
                    ratio = new / ref
                    # the objective each solver minimised (in output mode one fixed noise
                    # draw; Δ above is re-evaluated on fresh draws, output_report_samples)
                    ref_min = np.concatenate([np.concatenate(acc[m]["ref_min"]) for m in modes])
                    new_min = np.concatenate([np.concatenate(acc[m, start]["new_min"]) for m in modes])
                    quality.append((arch, mode, start, len(ref), ok.mean(), np.median(ratio),
                                    ratio.max(), np.mean(new < ref),
                                    within(new_min, ref_min, args.rtol, args.atol).mean(),
                                    np.mean(new_min < ref_min)))
                    # mean seconds per attack over the (model, mode) runs, each weighted alike
                    t_ref = np.mean([v for m in modes for v in acc[m]["t_ref"]])
                    t_new = np.mean([v for m in modes for v in acc[m, start]["t_new"]])
                    t_gpu = (np.mean([v for m in modes for v in acc[m, start]["t_gpu"]])
                             if gpu else None)
                    ev_ref = np.mean([v for m in modes for v in acc[m]["ev_ref"]])
                    ev_new = np.mean([v for m in modes for v in acc[m, start]["ev_new"]])
                    n_new = P * sum(len(acc[m, start]["t_new"]) for m in modes)
                    speed.append((arch, mode, start, n_new, len(ref), 1 / t_ref, 1 / t_new,
                                  t_ref / t_new, ev_ref, ev_new,
                                  None if t_gpu is None else 1 / t_gpu))
                    if mode != "all":
                        # the proposed default: warm in --warm-modes, else cold
                        proposed = "warm" if mode in args.warm_modes else "cold"
                        if proposed not in args.starts:
                            proposed = args.starts[0]
                        label = "summary" if start == proposed else f"{start} start"
                        summaries.append(f"{label} {arch} {mode}: speed {t_ref / t_new:.1f}x, "
                                         f"within tolerance {100 * ok.mean():.1f}%, median ratio "
                                         f"{np.median(ratio):.2f}")
            for floor in args.floors:
                for mode, _ in MODES:
                    ref = np.concatenate(acc[mode]["ref"])
                    again = np.concatenate(acc[mode][floor])
                    ref_min = np.concatenate(acc[mode]["ref_min"])
                    again_min = np.concatenate(acc[mode][floor, "min"])
                    floors.append(f"floor {arch} {mode}: {FLOORS[floor]}, within "
                                  f"tolerance {100 * within(again, ref, args.rtol, args.atol).mean():.1f}%, "
                                  f"median ratio {np.median(again / ref):.2f}; minimised objective "
                                  f"within {100 * within(again_min, ref_min, args.rtol, args.atol).mean():.1f}%")

        print(f"\nQuality at maxiter={maxiter} (batched vs scipy Δ; within = Δ_b <= Δ_s + "
              f"{args.rtol:g}·|Δ_s| + {args.atol:g}; bar: within >= 95%, median ratio <= 1.00)\n")
        print("| architecture | mode | batched start | problems | within tolerance | median Δ_b/Δ_s | worst Δ_b/Δ_s | batched lower | within, minimised objective | batched lower, minimised objective |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for arch, mode, start, n, w, med, worst, lower, w_min, lower_min in quality:
            print(f"| {arch} | {mode} | {start} | {n} | {100 * w:.1f}% | {med:.6f} | {worst:.3f} | "
                  f"{100 * lower:.0f}% | {100 * w_min:.1f}% | {100 * lower_min:.0f}% |")
        print(f"\nSpeed at maxiter={maxiter} (attacks/s over whole attack_problems calls, "
              f"{args.threads} thread(s); bar: ratio >= 5x mlp, >= 3x conv)\n")
        gpu_col = " batched GPU attacks/s |" if gpu else ""
        print(f"| architecture | mode | batched start | attacks batched | attacks scipy | scipy attacks/s | "
              f"batched attacks/s | ratio | scipy evals/attack | batched evals/attack | "
              f"scipy ms/eval | batched ms/eval |{gpu_col}")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
        for arch, mode, start, n_new, n_ref, a_ref, a_new, ratio, ev_ref, ev_new, a_gpu in speed:
            g = f" {a_gpu:.1f} |" if a_gpu is not None else ""
            # time per evaluation of one problem, solver work included: the ratio of these
            # is the speed-up the batched solver would reach at equal evaluation counts
            print(f"| {arch} | {mode} | {start} | {n_new} | {n_ref} | {a_ref:.1f} | {a_new:.1f} | "
                  f"{ratio:.1f}x | {ev_ref:.1f} | {ev_new:.1f} | {1e3 / (a_ref * ev_ref):.2f} | "
                  f"{1e3 / (a_new * ev_new):.2f} |{g}")
    # the bar, one line per architecture and mode (bar: speed >= 5x mlp and >= 3x
    # conv, within tolerance >= 95%, median ratio <= 1.00)
    print()
    # the proposed default's lines first, then the other starts', then scipy's floor
    for line in sorted(summaries, key=lambda line: not line.startswith("summary")) + floors:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
