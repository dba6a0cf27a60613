"""Benchmark: the batched attack solver and the batched attack protocol against the scipy
L-BFGS-B reference, and the bars that decide the default (issue 34).

Both run the same problems in one process at the paper's batch: every (pair, λ) of 10 pairs from
the held-out split of the generated dSprites × 51 λ for each model and mode (latent KL; output
ELBO, the mean over ``output_mc_samples`` fixed noise draws), stopping on their tolerances
(maxiter 15000), 1 thread, one ``attack_problems`` call per (model, mode) and run: for the
batched solver that is the 510 problems of one attack task.

Checkpoint sets: each ``--checkpoints [NAME=]DIR`` is one set (every ``*.pt`` in DIR, e.g. a
sweep's ``<out>/checkpoints``; ``--models-per-set N`` keeps a seeded sample of N spread over the
model kinds). An architecture in ``--architectures`` that no set holds gets one small model
trained here for ``--train-steps`` Adam steps, as the set ``trained`` (so the benchmark covers
conv on a fresh machine). A line is one (set, architecture, mode).

Per model and mode it runs: scipy from the random start d0 (cold, the paper's protocol) on every
problem; scipy again from a start one float32 ulp away on a seeded sample of ``--per-line``
problems per line (the floor); the batched solver cold; the batched protocol (warm starts along
the λ path in ``--protocol-warm-modes``, chains of ``--protocol-chain``). Every run ends with
the envelope (``attacks.envelope``), as the sweep's attacks do.

1. The solver, on the same start (cold batched against cold scipy, the same d0 per problem), on
   the objective each solver minimised: at least 100 problems; the share of problems whose
   batched minimum is at most ``scipy + rtol·|scipy| + atol`` no lower than scipy's own one-ulp
   floor minus two binomial standard errors (these attacks are path-dependent in float32, and
   a solver whose rounding differs from scipy's cannot agree with scipy more often than scipy
   agrees with itself one ulp away); at or below scipy in at least 45% of the problems; a
   median ratio batched / scipy ≤ 1.00. This checks that the solver is L-BFGS-B.
2. The protocol, on what the user reads: the reported Δ per (pair, λ) (the ``objective``
   column of ``attacks/``; in output mode on 32 fresh draws, the same for both), the protocol
   against scipy cold: median ratio ≤ 1.00; at least 98% of the points at or below 1.05× the
   reference; none above 1.5×. A ratio is (Δ + atol) / (Δ_ref + atol), so that a Δ of a
   thousandth of a nat at λ = 0 is not a ratio of noise (``--protocol-atol``).
3. Speed: seconds per attack of scipy cold over the protocol's, at least 3×.

It ends with ``summary <line> <mode>: ...`` (1), ``protocol <line> <mode>: speed <X>x, median
ratio <Z>, within 5% <W>%, worst <V>x`` (2, 3) and ``bar <line> <mode>: pass`` or ``FAIL
(reasons)`` for each line, where ``<line>`` is the architecture, or ``<set>/<architecture>``
when there is more than one set; it exits 1 if any line fails. ``reported <line> <mode>`` lines
(information) put the batched solver cold, and with ``--protocol-floor`` scipy from another
random start, through bar (2)'s figures: does a protocol miss come from the solver or the warm
start? With ``--protocol-polish`` the protocol also solves every end once more from itself
(``attacks.polish``) and the ``reported`` line adds it without that.

    python benchmarks/attack.py --checkpoints smoke=sweeps/smoke/checkpoints repro=sweeps/repro/checkpoints --models-per-set 12
    python benchmarks/attack.py                                      # trains its models
    python benchmarks/attack.py --n-pairs 2 --n-lambdas 9 --per-line 4 --maxiter 50  # a dry run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


def _pin_blas_threads(argv: list[str]) -> None:
    """numpy's and scipy's OpenBLAS (scipy's L-BFGS-B calls it) to ``--threads`` threads, before
    they load. A Ray task with 1 CPU gets OMP_NUM_THREADS=1, which OpenBLAS reads too; without
    it scipy ran its BLAS on both cores here (141% CPU for a "1-thread" run)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--threads", type=int, default=1)
    threads = str(pre.parse_known_args(argv)[0].threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)


_pin_blas_threads(sys.argv[1:])

import numpy as np  # noqa: E402
import torch  # noqa: E402

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
MODE_NAMES = tuple(mode for mode, _ in MODES)
MIN_PROBLEMS = 100          # problems per line the solver bar needs
PROTOCOL_SPEED_BAR = 3.0    # scipy cold seconds per attack over the protocol's
PROTOCOL_MEDIAN_BAR = 1.00  # median reported-Δ ratio, protocol / scipy cold
PROTOCOL_WITHIN = 1.05      # a point is "within 5%" at or below this ratio
PROTOCOL_WITHIN_BAR = 0.98  # ... in at least this share of the points
PROTOCOL_WORST_BAR = 1.5    # and no point above this ratio
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


class RestartedScipy(ScipyLBFGSB):
    """scipy from another random start, drawn as d0 is (U(-init_scale, init_scale), clipped to
    the box) from ``start_seed``, one per problem (d0 is one per pair): the same problem and
    noise, only the starting point differs, as a warm start's does (``--protocol-floor``)."""

    name = "scipy-restart"
    start_seed = 1

    def solve(self, objective, d0, lower, upper, config, after=None):
        g = torch.Generator().manual_seed(self.start_seed)
        other = (torch.rand(d0.shape, generator=g, dtype=d0.dtype) * 2 - 1) * config.init_scale
        other = torch.minimum(torch.maximum(other.to(lower), lower), upper).to(d0)
        return super().solve(objective, other, lower, upper, config, after)


# solver names AttackConfig accepts, for the floor runs of this benchmark only
SOLVERS[UlpNudgedScipy.name] = UlpNudgedScipy
SOLVERS[RestartedScipy.name] = RestartedScipy


def parse_set(spec: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` → (name, folder); a sweep's ``<out>/checkpoints`` is named after
    ``<out>``."""
    name, sep, folder = spec.partition("=")
    if not sep:
        folder = spec
        path = Path(folder)
        name = path.parent.name if path.name == "checkpoints" else path.name
    return name, Path(folder)


def sample_across_kinds(paths: list[Path], kinds: list[str], n: int | None, seed: int = 0) -> list[int]:
    """Indices of a seeded sample of ``n`` of ``paths`` spread over the model kinds: each kind's
    checkpoints in a seeded order, then taken one kind at a time in turn (all when ``n`` is None
    or not smaller)."""
    if n is None or n >= len(paths):
        return list(range(len(paths)))
    rng = np.random.default_rng(seed)
    queues = {k: list(rng.permutation([i for i, kk in enumerate(kinds) if kk == k]))
              for k in sorted(set(kinds))}
    chosen: list[int] = []
    while len(chosen) < n:
        for k in queues:
            if queues[k] and len(chosen) < n:
                chosen.append(int(queues[k].pop(0)))
    return sorted(chosen)


def load_models(spec: str, architectures: list[str], only: list[str] | None = None,
                per_set: int | None = None) -> tuple[str, dict[str, list[tuple[str, torch.nn.Module]]]]:
    """(set name, {architecture: [(name, model)]}) from the checkpoints of one set (those whose
    file name contains one of ``only``, if given; a sample of ``per_set`` across kinds)."""
    name, folder = parse_set(spec)
    paths = [p for p in sorted(folder.glob("*.pt")) if not only or any(part in p.name for part in only)]
    if not paths:
        raise SystemExit(f"no *.pt checkpoints in {folder}" + (f" matching {only}" if only else ""))
    loaded = [load_checkpoint(path)[0].eval() for path in paths]
    keep = sample_across_kinds(paths, [m.cfg.kind for m in loaded], per_set)
    out: dict[str, list] = defaultdict(list)
    for i in keep:
        if loaded[i].cfg.architecture in architectures:
            out[loaded[i].cfg.architecture].append((paths[i].stem, loaded[i]))
    return name, out


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
    """What one (set, architecture, mode) line collects over its models, problem by problem:
    the objective each solver minimised (scipy cold on every problem, the batched solver cold,
    scipy from a start one ulp away on the floor's sample), the reported Δ of scipy cold and of
    the protocol, and seconds and evaluations per attack of each run."""

    ref: list = field(default_factory=list)          # scipy cold, minimised objective
    cold: list = field(default_factory=list)         # batched cold, minimised objective
    floor_ref: list = field(default_factory=list)    # scipy cold on the floor's sample
    floor: dict = field(default_factory=lambda: defaultdict(list))  # scipy's floor runs there
    ref_report: list = field(default_factory=list)   # scipy cold + envelope, reported Δ
    proto_report: list = field(default_factory=list)  # the protocol, reported Δ
    cold_report: list = field(default_factory=list)   # batched cold + envelope, reported Δ
    restart_report: list = field(default_factory=list)  # scipy cold from another d0 (--protocol-floor)
    unpolished_report: list = field(default_factory=list)  # the protocol without --protocol-polish
    t_ref: list = field(default_factory=list)
    t_cold: list = field(default_factory=list)
    t_proto: list = field(default_factory=list)
    t_gpu: list = field(default_factory=list)
    ev_ref: list = field(default_factory=list)
    ev_cold: list = field(default_factory=list)
    ev_proto: list = field(default_factory=list)

    def cat(self, name: str) -> np.ndarray:
        return np.concatenate(getattr(self, name))


@dataclass
class SolverVerdict:
    """Bar (1) on one line, cold against cold, every figure as printed."""

    speed: float           # information: the protocol's speed is the bar
    within: float
    floor: float
    floor_minus_2se: float
    at_or_below: float
    median_ratio: float
    worst_ratio: float
    problems: int

    def failures(self) -> list[str]:
        out = []
        if self.problems < MIN_PROBLEMS:
            out.append(f"{self.problems} problems < {MIN_PROBLEMS}")
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


@dataclass
class ProtocolVerdict:
    """Bars (2) and (3) on one line: the protocol's reported Δ against scipy cold's."""

    speed: float
    median_ratio: float
    within_5: float
    worst: float
    points: int

    def failures(self) -> list[str]:
        out = []
        if self.speed < PROTOCOL_SPEED_BAR:
            out.append(f"speed {self.speed:.1f}x < {PROTOCOL_SPEED_BAR:g}x")
        if round(self.median_ratio, 2) > PROTOCOL_MEDIAN_BAR:
            out.append(f"median ratio {self.median_ratio:.4f} > {PROTOCOL_MEDIAN_BAR:.2f}")
        if self.within_5 < PROTOCOL_WITHIN_BAR:
            out.append(f"within 5% {100 * self.within_5:.1f}% < {100 * PROTOCOL_WITHIN_BAR:g}%")
        if self.worst > PROTOCOL_WORST_BAR:
            out.append(f"worst {self.worst:.2f}x > {PROTOCOL_WORST_BAR:g}x")
        return out

    def summary(self, label: str) -> str:
        return (f"{label}: speed {self.speed:.1f}x, median ratio {self.median_ratio:.2f}, "
                f"within 5% {100 * self.within_5:.1f}%, worst {self.worst:.2f}x")


def score_solver(line: Line, rtol: float, atol: float) -> SolverVerdict:
    """Bar (1): the batched minimum against scipy's from the same start, and scipy's one-ulp
    floor with its binomial standard error on the floor's sample."""
    ref, new = line.cat("ref"), line.cat("cold")
    if line.floor["ulp"]:
        floor_ref = line.cat("floor_ref")
        floor = float(within(np.concatenate(line.floor["ulp"]), floor_ref, rtol, atol).mean())
        se = np.sqrt(floor * (1 - floor) / len(floor_ref))
    else:
        floor, se = 1.0, 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = new / ref
    return SolverVerdict(speed=float(np.mean(line.t_ref) / np.mean(line.t_cold)),
                         within=float(within(new, ref, rtol, atol).mean()), floor=floor,
                         floor_minus_2se=float(floor - 2 * se), at_or_below=float(np.mean(new <= ref)),
                         median_ratio=float(np.nanmedian(ratio)), worst_ratio=float(np.nanmax(ratio)),
                         problems=len(ref))


def protocol_ratios(line: Line, atol: float, run: str = "proto") -> np.ndarray:
    """A run's reported Δ over scipy cold's, per (pair, λ), each with ``atol`` added: the
    protocol's (``proto``), the batched solver cold (``cold``), scipy from another random
    start (``restart``) or the protocol without its polish (``unpolished``)."""
    return (line.cat(f"{run}_report") + atol) / (line.cat("ref_report") + atol)


def ratio_figures(ratio: np.ndarray) -> str:
    """Bar (2)'s figures of any run against scipy cold."""
    return (f"median ratio {np.median(ratio):.4f}, within 5% {100 * np.mean(ratio <= PROTOCOL_WITHIN):.1f}%, "
            f"worst {np.max(ratio):.2f}x")


def score_protocol(line: Line, atol: float) -> ProtocolVerdict:
    """Bars (2) and (3): the reported Δ per (pair, λ) and seconds per attack, the protocol
    against scipy cold."""
    ratio = protocol_ratios(line, atol)
    return ProtocolVerdict(speed=float(np.mean(line.t_ref) / np.mean(line.t_proto)),
                           median_ratio=float(np.median(ratio)),
                           within_5=float(np.mean(ratio <= PROTOCOL_WITHIN)),
                           worst=float(np.max(ratio)), points=len(ratio))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="*", default=[], metavar="[NAME=]DIR",
                    help="checkpoint sets: folders of *.pt model files (e.g. a sweep's <out>/checkpoints)")
    ap.add_argument("--models-per-set", type=int, default=None,
                    help="a seeded sample of this many checkpoints per set, spread over the model kinds")
    ap.add_argument("--architectures", nargs="+", default=["mlp", "conv"])
    ap.add_argument("--modes", nargs="+", choices=list(MODE_NAMES), default=list(MODE_NAMES),
                    help="attack modes measured (a line is one mode)")
    ap.add_argument("--only", nargs="+", help="checkpoints whose file name contains one of these")
    ap.add_argument("--train-steps", type=int, default=300,
                    help="Adam steps for a model trained here (no checkpoint of an architecture)")
    ap.add_argument("--n-pairs", type=int, default=10)
    ap.add_argument("--n-lambdas", type=int, default=51)
    ap.add_argument("--maxiter", type=int, default=AttackConfig.maxiter,
                    help="every run's iteration limit (default: the config's, 15000)")
    ap.add_argument("--rtol", type=float, default=0.01)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--protocol-atol", type=float, default=1e-3,
                    help="nats added to both reported Δ of a protocol ratio")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (a Ray attack task has 1 CPU)")
    ap.add_argument("--per-line", type=int, default=MIN_PROBLEMS,
                    help="problems of the ulp floor per line, split over the line's models, a "
                         "seeded uniform sample over pairs and λ")
    ap.add_argument("--protocol-warm-modes", nargs="*", default=list(MODE_NAMES),
                    help="modes the batched protocol warm-starts along the λ path")
    ap.add_argument("--protocol-chain", type=int, default=AttackConfig.warm_chain,
                    help="λ per warm-start chain in the protocol")
    ap.add_argument("--protocol-polish", nargs="*", choices=list(MODE_NAMES), default=[],
                    help="modes whose ends the protocol solves once more from themselves "
                         "(AttackConfig.polish); each also runs unpolished, for information")
    ap.add_argument("--batch-history", type=int, default=None,
                    help="batched solver's L-BFGS memory (AttackConfig.batch_history)")
    ap.add_argument("--floors", nargs="*", choices=list(FLOORS), default=["ulp"],
                    help="scipy's extra runs scored against its first: 'ulp' (the bar's floor) "
                         "and 'seed' (another seed: other start and noise; information)")
    ap.add_argument("--protocol-floor", action="store_true",
                    help="also run scipy cold from another random start on every problem and print "
                         "its reported Δ against scipy cold's: bar (2) for scipy itself (information)")
    ap.add_argument("--show-misses", action="store_true",
                    help="print every problem outside a bar's tolerance")
    return ap.parse_args(argv)


def prepare(args):
    """(problems, {(set, arch): [(name, model)]}) with every model's health printed."""
    from sweep.data import load_dataset

    t0 = time.perf_counter()
    dataset = load_dataset("dsprites_generated", size=20000, seed=0, held_out=0.1)
    problems = smoke_problems(dataset, args.n_pairs, args.n_lambdas)
    groups: dict[tuple[str, str], list] = {}
    for spec in args.checkpoints:
        name, by_arch = load_models(spec, args.architectures, args.only, args.models_per_set)
        for arch, models in by_arch.items():
            groups[name, arch] = models
    for arch in args.architectures:
        if not any(a == arch for _, a in groups):
            groups["trained", arch] = [(f"{arch}-vae-trained{args.train_steps}",
                                        train_model(arch, dataset, args.train_steps))]
    gpu = torch.cuda.is_available()
    print(f"setup {time.perf_counter() - t0:.0f}s; {len(problems[0])} problems per (model, mode) "
          f"= {args.n_pairs} pairs x {args.n_lambdas} λ; torch threads={args.threads}; "
          f"maxiter {args.maxiter}; protocol: batched, warm {args.protocol_warm_modes or 'none'}, "
          f"chain {args.protocol_chain}, polish {args.protocol_polish or 'none'}; GPU: {torch.cuda.get_device_name() if gpu else 'none'}")
    for (set_name, arch), models in groups.items():
        for name, model in models:
            print(f"  {set_name} {arch} {name}: {health(model, dataset)}")
    # warm-up (first calls allocate and initialise kernels)
    warm = tuple(t[:2] for t in problems)
    for models in groups.values():
        for solver in ("scipy", "batched"):
            run(models[0][1], warm, LATENT, KL, AttackConfig(solver=solver, maxiter=5))
    return problems, groups


def measure_model(args, line: Line, name: str, model, problems, sample, mode: str, sim: str):
    """scipy cold (every problem) and its floors (``sample``), the batched solver cold and the
    batched protocol (every problem), into ``line``."""
    P = len(problems[0])
    scipy_cfg = AttackConfig(solver="scipy", maxiter=args.maxiter)
    ref, t_ref, o_ref = run(model, problems, mode, sim, scipy_cfg)
    for floor in args.floors:
        solver, seed = ("scipy", 1) if floor == "seed" else (UlpNudgedScipy.name, 0)
        again, _, _ = run(model, subset(problems, sample), mode, sim,
                          dataclasses.replace(scipy_cfg, solver=solver), seed=seed)
        line.floor[floor].append(again)
    cold_cfg = AttackConfig(solver="batched", maxiter=args.maxiter, batch_history=args.batch_history)
    cold, t_cold, o_cold = run(model, problems, mode, sim, cold_cfg)
    proto_cfg = cold_cfg
    if mode in args.protocol_warm_modes:
        proto_cfg = dataclasses.replace(proto_cfg, warm_start=(mode,), warm_chain=args.protocol_chain)
    if mode in args.protocol_polish:   # information: the same protocol without its polish
        unpolished = o_cold if proto_cfg is cold_cfg else run(model, problems, mode, sim, proto_cfg)[2]
        line.unpolished_report.append(unpolished.objective.double().numpy())
        proto_cfg = dataclasses.replace(proto_cfg, polish=(mode,))
    if proto_cfg is cold_cfg:   # the protocol is the cold batched run
        t_proto, o_proto = t_cold, o_cold
    else:
        _, t_proto, o_proto = run(model, problems, mode, sim, proto_cfg)
    if torch.cuda.is_available():
        line.t_gpu.append(run(model, problems, mode, sim, proto_cfg, "cuda")[1] / P)
    line.ref.append(ref)
    line.cold.append(cold)
    line.floor_ref.append(ref[sample])
    line.ref_report.append(o_ref.objective.double().numpy())
    line.proto_report.append(o_proto.objective.double().numpy())
    line.cold_report.append(o_cold.objective.double().numpy())
    if args.protocol_floor:   # what a start other than d0 alone does to scipy's reported Δ
        restart_cfg = dataclasses.replace(scipy_cfg, solver=RestartedScipy.name)
        line.restart_report.append(run(model, problems, mode, sim, restart_cfg)[2].objective.double().numpy())
    for key, seconds, outcome in (("ref", t_ref, o_ref), ("cold", t_cold, o_cold), ("proto", t_proto, o_proto)):
        getattr(line, f"t_{key}").append(seconds / P)
        getattr(line, f"ev_{key}").append(outcome.result.evaluations.mean())
    print(f"  [{name} {mode}] scipy cold {t_ref:.1f}s, batched cold {t_cold:.1f}s, protocol "
          f"{'warm' if proto_cfg.warm_start else 'cold'} {t_proto:.1f}s for {P} "
          f"({t_ref / t_proto:.1f}x)", flush=True)
    if args.show_misses:
        show_misses(args, problems, ref, cold, o_ref, o_cold, o_proto)


@np.errstate(divide="ignore", invalid="ignore")
def show_misses(args, problems, ref, cold, o_ref, o_cold, o_proto) -> None:
    """Every problem outside the solver bar's tolerance, and every (pair, λ) of the protocol
    above 1.05× scipy cold's reported Δ."""
    lam = problems[2].double().numpy()
    for p in np.flatnonzero(~within(cold, ref, args.rtol, args.atol)):
        print(f"    solver miss: problem {p} λ={lam[p]:.3g} scipy {ref[p]:.6g} ({o_ref.result.evaluations[p]} "
              f"evals, {o_ref.result.messages[p][:24]}) batched {cold[p]:.6g} ({o_cold.result.evaluations[p]} evals)")
    a = args.protocol_atol
    rep_ref, rep_new = o_ref.objective.double().numpy(), o_proto.objective.double().numpy()
    for p in np.flatnonzero((rep_new + a) / (rep_ref + a) > PROTOCOL_WITHIN):
        print(f"    protocol miss: problem {p} λ={lam[p]:.3g} scipy cold Δ {rep_ref[p]:.6g}, protocol "
              f"Δ {rep_new[p]:.6g} (from the path: {bool(o_proto.from_path[p])})")


def print_tables(args, lines: dict, solver: dict, protocol: dict) -> None:
    print(f"\n(1) The solver, cold against cold: the objective each minimised (within = batched <= "
          f"scipy + {args.rtol:g}·|scipy| + {args.atol:g}); floor: scipy from a start one ulp away, "
          f"scored the same way\n")
    print("| line | mode | problems | within | floor (-2se) | at or below | median ratio | worst ratio | seed floor |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, line in lines.items():
        v = solver[key]
        seed = (f"{100 * within(np.concatenate(line.floor['seed']), line.cat('floor_ref'), args.rtol, args.atol).mean():.1f}%"
                if line.floor["seed"] else "—")
        print(f"| {key[0]} | {key[1]} | {v.problems} | {100 * v.within:.1f}% | {100 * v.floor:.1f}% "
              f"({100 * v.floor_minus_2se:.1f}%) | {100 * v.at_or_below:.0f}% | {v.median_ratio:.4f} | "
              f"{v.worst_ratio:.3f} | {seed} |")
    print(f"\n(2) The protocol (batched, warm {args.protocol_warm_modes or 'none'}, chain "
          f"{args.protocol_chain}, polish {args.protocol_polish or 'none'}, envelope) against scipy "
          f"cold with the envelope: reported Δ per (pair, λ), ratio (Δ + {args.protocol_atol:g}) / (Δ_ref + {args.protocol_atol:g})\n")
    print("| line | mode | points | median ratio | within 5% | above 1.5x | worst | at or below |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key, line in lines.items():
        v, ratio = protocol[key], protocol_ratios(line, args.protocol_atol)
        print(f"| {key[0]} | {key[1]} | {v.points} | {v.median_ratio:.4f} | {100 * v.within_5:.1f}% | "
              f"{int(np.sum(ratio > PROTOCOL_WORST_BAR))} | {v.worst:.3f} | {100 * np.mean(ratio <= 1.0):.0f}% |")
    gpu = any(line.t_gpu for line in lines.values())
    print(f"\n(3) Speed: attacks per second over whole attack_problems calls, {args.threads} "
          f"thread(s); evaluations and ms per evaluation of one problem, solver work included\n")
    print("| line | mode | scipy cold /s | batched cold /s | protocol /s | protocol speed-up | scipy evals | "
          "cold evals | protocol evals | scipy ms/eval | batched ms/eval |" + (" protocol GPU /s |" if gpu else ""))
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
    for key, line in lines.items():
        a_ref, a_cold, a_proto = (1 / np.mean(getattr(line, f"t_{k}")) for k in ("ref", "cold", "proto"))
        ev_ref, ev_cold, ev_proto = (np.mean(getattr(line, f"ev_{k}")) for k in ("ref", "cold", "proto"))
        g = f" {1 / np.mean(line.t_gpu):.1f} |" if gpu else ""
        print(f"| {key[0]} | {key[1]} | {a_ref:.2f} | {a_cold:.2f} | {a_proto:.2f} | {a_proto / a_ref:.1f}x | "
              f"{ev_ref:.0f} | {ev_cold:.0f} | {ev_proto:.0f} | {1e3 / (a_ref * ev_ref):.2f} | "
              f"{1e3 / (a_proto * ev_proto):.2f} |{g}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    problems, groups = prepare(args)
    P = len(problems[0])
    several = len({s for s, _ in groups}) > 1
    lines, solver, protocol = {}, {}, {}
    for (set_name, arch), models in groups.items():
        label = f"{set_name}/{arch}" if several else arch
        per_model = -(-args.per_line // len(models))
        # a seeded uniform sample over pairs and λ (a stride would see the same few λ of every pair)
        sample = np.sort(np.random.default_rng(0).choice(P, min(per_model, P), replace=False))
        for mode, sim in ((m, s) for m, s in MODES if m in args.modes):
            key = (label, mode)
            line = lines[key] = Line()
            for name, model in models:
                measure_model(args, line, name, model, problems, sample, mode, sim)
            solver[key] = score_solver(line, args.rtol, args.atol)
            protocol[key] = score_protocol(line, args.protocol_atol)
    print_tables(args, lines, solver, protocol)
    print()
    for (label, mode), v in solver.items():
        print(v.summary(f"summary {label} {mode}"))
    for (label, mode), v in protocol.items():
        print(v.summary(f"protocol {label} {mode}"))
    for (label, mode), line in lines.items():   # information: where the protocol's misses come from
        print(f"reported {label} {mode}: batched cold {ratio_figures(protocol_ratios(line, args.protocol_atol, 'cold'))}"
              + (f"; scipy from another start {ratio_figures(protocol_ratios(line, args.protocol_atol, 'restart'))}"
                 if line.restart_report else "")
              + (f"; the protocol without polish {ratio_figures(protocol_ratios(line, args.protocol_atol, 'unpolished'))}"
                 if line.unpolished_report else ""))
    failed_any = False
    for key in lines:
        failed = ([f"solver: {f}" for f in solver[key].failures()]
                  + [f"protocol: {f}" for f in protocol[key].failures()])
        failed_any |= bool(failed)
        print(f"bar {key[0]} {key[1]}: " + ("pass" if not failed else "FAIL (" + "; ".join(failed) + ")"))
    return 1 if failed_any else 0


if __name__ == "__main__":
    raise SystemExit(main())
