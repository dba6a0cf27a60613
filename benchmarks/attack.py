"""Benchmark: the batched attack solver against the scipy L-BFGS-B reference, and the bar it meets.

Both solvers attack the same problems in one process, by default at the paper's batch: every
(pair, λ) of 10 pairs from the held-out split of the generated dSprites × 51 λ for each model and
mode (latent KL; output ELBO, the mean over ``output_mc_samples`` fixed noise draws), both
stopping on their tolerances (maxiter 15000), 1 thread, one ``attack_problems`` call per
(model, mode): for the batched solver that is the 510 problems of one attack task.

Models: ``--checkpoints DIR`` loads every ``*.pt`` in DIR (e.g. the smoke sweep's
``<out>/checkpoints``; all of them are MLPs) and groups them by architecture; an architecture
in ``--architectures`` without a checkpoint gets one small model trained here for
``--train-steps`` Adam steps (so the benchmark runs on a fresh machine and covers conv).

scipy solves one problem at a time, so its attacks/s does not depend on which: it solves a
seeded uniform sample over pairs and λ of ``--per-line`` problems (default 100) per
architecture and mode, split over that architecture's models. The batched solver solves all of
them, warm-started along the λ path in ``--warm-modes`` (default: the config's ``warm_start``).

The bar, per line (architecture × mode), on the objective each solver minimised (the solver's
job; the reported Δ, re-evaluated on fresh draws in output mode, is printed as information):

* within tolerance: the share of problems whose batched minimum is at most
  ``scipy + rtol·|scipy| + atol`` is no lower than scipy's own one-ulp floor minus two binomial
  standard errors. The floor is scipy on the same problems and noise from a start with every
  coordinate moved one float32 ulp towards 0, scored the same way: these attacks are
  path-dependent in float32, and a solver whose rounding differs from scipy's in any way cannot
  be expected to agree with scipy more often than scipy agrees with itself one ulp away;
* at or below scipy in at least 45% of the problems, and a median ratio batched / scipy ≤ 1.00;
* speed (seconds per attack, scipy over batched) at least 5× (mlp) and 3× (conv).

It ends with one line per architecture and mode,
``summary <arch> <mode>: speed <X>x, within tolerance <Y>% (floor <F>%, -2se <G>%), at or below
scipy <B>%, median ratio <Z>``, then ``bar <arch> <mode>: pass`` or what failed, and exits 1
if any line fails.

    python benchmarks/attack.py --checkpoints <out>/checkpoints --only vae-b1 seatbelt-b6
    python benchmarks/attack.py                                      # trains its models
    python benchmarks/attack.py --n-pairs 2 --n-lambdas 5 --per-line 4 --maxiter 50  # a dry run
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attacks.config import AttackConfig  # noqa: E402
from attacks.metrics import lambda_grid, sample_pairs  # noqa: E402
from attacks.run import attack_problems  # noqa: E402
from attacks.solvers import SOLVERS, ScipyLBFGSB  # noqa: E402
from models import build_model, load_checkpoint  # noqa: E402
from results.schema import TRAIN_ELBO  # noqa: E402
from results.vocabulary import DEFAULT_SIMILARITY, KL, LATENT  # noqa: E402
from sweep.config import TrainConfig, model_config_for  # noqa: E402
from sweep.train.evaluate import (active_units, elbo_parts, logvar_at_bound,  # noqa: E402
                            mean_image_loglik, posteriors, recon_r2)
from sweep.config.trials import TrialSpec  # noqa: E402
from sweep.train.health import verdict  # noqa: E402
from sweep.train.trainable import training_pixel_statistics  # noqa: E402

MODES = tuple(DEFAULT_SIMILARITY.items())  # each mode with its default similarity: latent kl, output elbo
MIN_PROBLEMS = 100          # problems per line the bar needs
SPEED_BAR = {"mlp": 5.0, "conv": 3.0}
AT_OR_BELOW_BAR = 0.45     # the batched minimum at or below scipy's in at least this share
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
    vae = TrialSpec(dataset.name, "vae", 1.0, 1, 6, seed)
    model = build_model(model_config_for(vae, TrainConfig(architecture=arch, hidden_dim=256), dataset))
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
        elbo = elbo_parts(model, images, 256)[TRAIN_ELBO]
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
    """(the objective the solver minimised [P], wall seconds, SolveResult) of one
    ``attack_problems`` call."""
    x, xt, lam, si, ti = problems
    model = model.to(device)
    t0 = time.perf_counter()
    outcome = attack_problems(model, x.to(device), xt.to(device), lam.to(device), mode, sim,
                              cfg, si, ti, seed=seed)
    if device != "cpu":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    model.to("cpu")
    return np.asarray(outcome.result.objective, dtype=np.float64), wall, outcome


@dataclass
class Line:
    """What one (architecture, mode, batched start) line collects over its models: the
    minimised objective of scipy, of its floor runs and of the batched solver on the problems
    scipy solved, the reported Δ of both (information), and seconds and evaluations per
    attack."""

    ref: list = field(default_factory=list)
    new: list = field(default_factory=list)
    floor: dict = field(default_factory=lambda: defaultdict(list))
    ref_delta: list = field(default_factory=list)
    new_delta: list = field(default_factory=list)
    t_ref: list = field(default_factory=list)
    t_new: list = field(default_factory=list)
    t_gpu: list = field(default_factory=list)
    ev_ref: list = field(default_factory=list)
    ev_new: list = field(default_factory=list)

    def cat(self, name: str) -> np.ndarray:
        return np.concatenate(getattr(self, name))


@dataclass
class Verdict:
    """The bar on one line (module docstring), every figure as printed."""

    speed: float
    within: float
    floor: float
    floor_minus_2se: float
    at_or_below: float
    median_ratio: float
    problems: int
    speed_bar: float

    def failures(self) -> list[str]:
        out = []
        if self.problems < MIN_PROBLEMS:
            out.append(f"{self.problems} problems < {MIN_PROBLEMS}")
        if self.speed < self.speed_bar:
            out.append(f"speed {self.speed:.1f}x < {self.speed_bar:g}x")
        if self.within < self.floor_minus_2se:
            out.append(f"within {100 * self.within:.1f}% < {100 * self.floor_minus_2se:.1f}%")
        if self.at_or_below < AT_OR_BELOW_BAR:
            out.append(f"at or below {100 * self.at_or_below:.0f}% < {100 * AT_OR_BELOW_BAR:.0f}%")
        if round(self.median_ratio, 2) > 1.0:
            out.append(f"median ratio {self.median_ratio:.4f} > 1.00")
        return out

    def summary(self, label: str) -> str:
        return (f"{label}: speed {self.speed:.1f}x, within tolerance {100 * self.within:.1f}% "
                f"(floor {100 * self.floor:.1f}%, -2se {100 * self.floor_minus_2se:.1f}%), "
                f"at or below scipy {100 * self.at_or_below:.0f}%, median ratio "
                f"{self.median_ratio:.2f}")


def score(line: Line, arch: str, rtol: float, atol: float) -> Verdict:
    """Score a line: the batched minimum against scipy's, and scipy's one-ulp floor with its
    binomial standard error on the same problems."""
    ref, new = line.cat("ref"), line.cat("new")
    floor = within(np.concatenate(line.floor["ulp"]), ref, rtol, atol).mean() if line.floor["ulp"] else 1.0
    se = np.sqrt(floor * (1 - floor) / len(ref))
    return Verdict(speed=float(np.mean(line.t_ref) / np.mean(line.t_new)),
                   within=float(within(new, ref, rtol, atol).mean()), floor=float(floor),
                   floor_minus_2se=float(floor - 2 * se), at_or_below=float(np.mean(new <= ref)),
                   median_ratio=float(np.median(new / ref)), problems=len(ref),
                   speed_bar=SPEED_BAR.get(arch, 3.0))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default=None, help="folder of *.pt model files (smoke sweep)")
    ap.add_argument("--architectures", nargs="+", default=["mlp", "conv"])
    ap.add_argument("--only", nargs="+", help="checkpoints whose file name contains one of these")
    ap.add_argument("--train-steps", type=int, default=300,
                    help="Adam steps for a model trained here (no checkpoint of an architecture)")
    ap.add_argument("--n-pairs", type=int, default=10)
    ap.add_argument("--n-lambdas", type=int, default=51)
    ap.add_argument("--maxiter", type=int, default=AttackConfig.maxiter,
                    help="both solvers' iteration limit (default: the config's, 15000)")
    ap.add_argument("--rtol", type=float, default=0.01)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a Ray attack task has 1 CPU)")
    ap.add_argument("--per-line", type=int, default=MIN_PROBLEMS,
                    help="problems scipy solves per architecture and mode, split over that "
                         "architecture's models, a seeded uniform sample over pairs and λ")
    ap.add_argument("--warm-modes", nargs="*", default=list(AttackConfig.warm_start),
                    help="modes whose batched run warm-starts along the λ path (default: the "
                         "config's warm_start)")
    ap.add_argument("--warm-chain", type=int, default=AttackConfig.warm_chain)
    ap.add_argument("--batch-history", type=int, default=None,
                    help="batched solver's L-BFGS memory (AttackConfig.batch_history)")
    ap.add_argument("--floors", nargs="*", choices=list(FLOORS), default=["ulp"],
                    help="scipy's extra runs scored against its first: 'ulp' (the bar's floor) "
                         "and 'seed' (another seed: other start and noise; information)")
    ap.add_argument("--show-misses", action="store_true",
                    help="print every problem outside the quality tolerance")
    return ap.parse_args(argv)


def prepare(args):
    """(dataset, problems, {arch: [(name, model)]}) with every model's health printed."""
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
    print(f"setup {time.perf_counter() - t0:.0f}s; {len(problems[0])} problems per (model, mode) "
          f"= {args.n_pairs} pairs x {args.n_lambdas} λ; torch threads={args.threads}; "
          f"maxiter {args.maxiter}; GPU: {torch.cuda.get_device_name() if gpu else 'none'}")
    for arch in args.architectures:
        for name, model in models[arch]:
            print(f"  {arch} {name}: {health(model, dataset)}")
    # warm-up (first calls allocate and initialise kernels)
    warm = tuple(t[:2] for t in problems)
    for arch in args.architectures:
        for solver in ("scipy", "batched"):
            run(models[arch][0][1], warm, LATENT, KL, AttackConfig(solver=solver, maxiter=5))
    return dataset, problems, models


def measure_model(args, line: Line, name: str, model, problems, sample, mode: str, sim: str):
    """scipy (and its floors) on ``sample``, the batched solver on every problem, into ``line``."""
    P = len(problems[0])
    scipy_cfg = AttackConfig(solver="scipy", maxiter=args.maxiter)
    ref, t_ref, o_ref = run(model, subset(problems, sample), mode, sim, scipy_cfg)
    for floor in args.floors:
        solver, seed = ("scipy", 1) if floor == "seed" else (UlpNudgedScipy.name, 0)
        again, _, _ = run(model, subset(problems, sample), mode, sim,
                          dataclasses.replace(scipy_cfg, solver=solver), seed=seed)
        line.floor[floor].append(again)
    cfg = AttackConfig(solver="batched", maxiter=args.maxiter, batch_history=args.batch_history,
                       warm_start=(mode,) if mode in args.warm_modes else (),
                       warm_chain=args.warm_chain)
    new_all, t_new, o_new = run(model, problems, mode, sim, cfg)
    if torch.cuda.is_available():
        line.t_gpu.append(run(model, problems, mode, sim, cfg, "cuda")[1] / P)
    line.ref.append(ref)
    line.new.append(new_all[sample])
    line.ref_delta.append(o_ref.objective.double().numpy())
    line.new_delta.append(o_new.objective.double().numpy()[sample])
    line.t_ref.append(t_ref / len(sample))
    line.t_new.append(t_new / P)
    line.ev_ref.append(o_ref.result.evaluations.mean())
    line.ev_new.append(o_new.result.evaluations.mean())
    print(f"  [{name} {mode}] scipy {t_ref:.1f}s for {len(sample)}, batched "
          f"{'warm' if cfg.warm_start else 'cold'} {t_new:.1f}s for {P} "
          f"({(t_ref / len(sample)) / (t_new / P):.1f}x per attack)", flush=True)
    if args.show_misses:
        lam = problems[2].double().numpy()[sample]
        for j in np.flatnonzero(~within(new_all[sample], ref, args.rtol, args.atol)):
            p = sample[j]
            print(f"    miss: problem {p} λ={lam[j]:.3g} scipy {ref[j]:.6g} "
                  f"({o_ref.result.evaluations[j]} evals, {o_ref.result.messages[j][:24]}) "
                  f"batched {new_all[p]:.6g} ({o_new.result.evaluations[p]} evals)")


@np.errstate(divide="ignore", invalid="ignore")   # a reported Δ of 0 (λ = 0, target reached)
def print_tables(args, lines: dict, verdicts: dict) -> None:
    print(f"\nQuality: the objective each solver minimised, batched against scipy (within = "
          f"batched <= scipy + {args.rtol:g}·|scipy| + {args.atol:g}); floor: scipy from a start "
          f"one ulp away, scored the same way; reported Δ columns are information\n")
    print("| architecture | mode | start | problems | within | floor (-2se) | at or below | "
          "median ratio | worst ratio | Δ within | Δ median ratio | seed floor |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (arch, mode), line in lines.items():
        v = verdicts[arch, mode]
        ref, new = line.cat("ref"), line.cat("new")
        rd, nd = line.cat("ref_delta"), line.cat("new_delta")
        seed = (f"{100 * within(np.concatenate(line.floor['seed']), ref, args.rtol, args.atol).mean():.1f}%"
                if line.floor["seed"] else "—")
        print(f"| {arch} | {mode} | {'warm' if mode in args.warm_modes else 'cold'} | {v.problems} | "
              f"{100 * v.within:.1f}% | {100 * v.floor:.1f}% ({100 * v.floor_minus_2se:.1f}%) | "
              f"{100 * v.at_or_below:.0f}% | {v.median_ratio:.4f} | {np.max(new / ref):.3f} | "
              f"{100 * within(nd, rd, args.rtol, args.atol).mean():.1f}% | "
              f"{np.median(nd / rd):.4f} | {seed} |")
    gpu = any(line.t_gpu for line in lines.values())
    print(f"\nSpeed (seconds per attack over whole attack_problems calls, {args.threads} "
          f"thread(s); bar: >= 5x mlp, >= 3x conv)\n")
    print("| architecture | mode | scipy attacks/s | batched attacks/s | ratio | scipy evals/attack | "
          "batched evals/attack | scipy ms/eval | batched ms/eval |" + (" batched GPU attacks/s |" if gpu else ""))
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
    for (arch, mode), line in lines.items():
        a_ref, a_new = 1 / np.mean(line.t_ref), 1 / np.mean(line.t_new)
        ev_ref, ev_new = np.mean(line.ev_ref), np.mean(line.ev_new)
        g = f" {1 / np.mean(line.t_gpu):.1f} |" if gpu else ""
        # ms per evaluation of one problem, solver work included: their ratio is the speed-up
        # the batched solver would reach at equal evaluation counts
        print(f"| {arch} | {mode} | {a_ref:.2f} | {a_new:.2f} | {a_ref and a_new / a_ref:.1f}x | "
              f"{ev_ref:.0f} | {ev_new:.0f} | {1e3 / (a_ref * ev_ref):.2f} | "
              f"{1e3 / (a_new * ev_new):.2f} |{g}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    _, problems, models = prepare(args)
    P = len(problems[0])
    lines, verdicts = {}, {}
    for arch in args.architectures:
        per_model = -(-args.per_line // len(models[arch]))
        # a seeded uniform sample over pairs and λ (a stride would see the same few λ of every pair)
        sample = np.sort(np.random.default_rng(0).choice(P, min(per_model, P), replace=False))
        for mode, sim in MODES:
            line = lines[arch, mode] = Line()
            for name, model in models[arch]:
                measure_model(args, line, name, model, problems, sample, mode, sim)
            verdicts[arch, mode] = score(line, arch, args.rtol, args.atol)
    print_tables(args, lines, verdicts)
    print()
    for (arch, mode), v in verdicts.items():
        print(v.summary(f"summary {arch} {mode}"))
    for (arch, mode), v in verdicts.items():
        failed = v.failures()
        print(f"bar {arch} {mode}: " + ("pass" if not failed else "FAIL (" + "; ".join(failed) + ")"))
    return 0 if not any(v.failures() for v in verdicts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
