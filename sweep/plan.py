"""Resource planning: what a sweep costs on GPUs, from a measurement on this device.

    python -m sweep.grid --preset paper --dry-run --plan --gpus 16 [--gpu-speedup 25]

Measures, on this machine's device (the first CUDA GPU if there is one, else the CPU with the
threads one trial gets), a few full training steps (objective, backward, Adam) of the grid's
shallowest and deepest model of each architecture at the trial's batch size and widths, and the
seconds per objective evaluation of each attack mode on the deepest model; then multiplies out:

* training: trials x steps x seconds/step (depth in between: interpolated linearly in L);
* attacks: checkpoints x attacks x evaluations/attack x seconds/evaluation.

Without a GPU the figures are this CPU's; ``--gpu-speedup`` (how many times faster one GPU is,
e.g. from ``benchmarks/train_step.py`` run on both) turns them into GPU figures, and the output
says which it did. ``--evals-per-attack`` is the one figure that cannot be measured without
running the attacks on trained models: by default it is the solver's limit (``min(maxiter,
maxfun)``: L-BFGS-B takes about one evaluation per iteration), an upper bound; ``benchmarks/attack.py`` prints evaluations/attack.
"""

from __future__ import annotations

import platform
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from results import kinds
from sweep.config import SweepConfig
from sweep.data import dataset_spec
from sweep.trials import TrialSpec


@dataclass(frozen=True)
class Shape:
    """What sets the cost of a model: architecture, image channels, depth."""

    architecture: str
    channels: int
    layers: int


def shape_of(cfg: SweepConfig, spec: TrialSpec) -> Shape:
    return Shape(cfg.train.architecture_for(spec.dataset), dataset_spec(spec.dataset).channels, spec.layers)


def _model(cfg: SweepConfig, shape: Shape, kind: str, z_dim: int):
    from models import ModelConfig, build_model

    return build_model(ModelConfig(
        kind=kind, architecture=shape.architecture, channels=shape.channels, z_dim=z_dim,
        layers=shape.layers, beta=kinds.get(kind).beta_or(4.0),
        likelihood="gaussian" if shape.channels == 3 else "bernoulli",
        free_bits=cfg.train.free_bits, tc_estimator=cfg.train.tc_estimator, dataset_size=100_000,
        hidden_dim=cfg.train.hidden_dim, condition_on_x=cfg.train.condition_on_x,
    ))


def _images(shape: Shape, n: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, shape.channels, 64, 64, generator=g)
    return (x > 0.5).float().to(device) if shape.channels == 1 else x.to(device)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(cfg: SweepConfig, shape: Shape, kind: str, z_dim: int, device, steps: int) -> float:
    """Seconds of one full training step (the fastest of ``steps``, after one warm-up step)."""
    import torch

    model = _model(cfg, shape, kind, z_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    x = _images(shape, cfg.train.batch_size, device)
    times = []
    for i in range(steps + 1):
        _sync(device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model.objective(x).loss.backward()
        optimizer.step()
        _sync(device)
        if i:  # the first step warms up
            times.append(time.perf_counter() - started)
    return min(times)  # the fastest: a shared machine only ever slows a step down


def measure_evaluation(cfg: SweepConfig, shape: Shape, kind: str, z_dim: int, device,
                       mode: str, similarity: str) -> float:
    """Seconds per objective+gradient evaluation of one attack, with the configured solver."""
    import dataclasses

    import torch

    from attacks.run import attack_problems

    model = _model(cfg, shape, kind, z_dim).to(device).eval()
    x, target = _images(shape, 2, device).split(1)
    attack_cfg = dataclasses.replace(cfg.attack, maxiter=6, maxfun=8)
    best = float("inf")
    for _ in range(2):  # the first run warms up
        _sync(device)
        started = time.perf_counter()
        result, _, _ = attack_problems(model, x, target, torch.tensor([1.0], device=device), mode,
                                       similarity, attack_cfg, [0], [1], seed=0)
        _sync(device)
        best = min(best, (time.perf_counter() - started) / max(1, int(result.evaluations.sum())))
    return best


def _device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return torch.device("cpu"), name


def plan_sweep(cfg: SweepConfig, specs: list[TrialSpec], gpus: float = 8, gpu_speedup: float | None = None,
               evals_per_attack: float | None = None, steps: int = 2) -> str:
    """The plan as printable text (see the module docstring)."""
    import torch

    if gpus <= 0:
        raise ValueError("--gpus must be > 0")
    device, device_name = _device()
    on_gpu = device.type == "cuda"
    threads = max(1, int(cfg.resources.cpus_per_trial))
    if not on_gpu:
        torch.set_num_threads(threads)
    speedup = 1.0 if on_gpu else (gpu_speedup or 1.0)
    # L-BFGS-B takes about one evaluation per iteration; it stops at maxiter or maxfun.
    evals = float(evals_per_attack) if evals_per_attack else float(min(cfg.attack.maxiter, cfg.attack.maxfun))
    z_dim = max(cfg.grid.z_dims)
    started = time.perf_counter()

    # The grid's shapes; per (architecture, channels) measure the shallowest and the deepest.
    shapes = Counter(shape_of(cfg, s) for s in specs)
    kinds_at: dict[Shape, set[str]] = defaultdict(set)
    for s in specs:
        kinds_at[shape_of(cfg, s)].add(s.model)
    families = sorted({(sh.architecture, sh.channels) for sh in shapes})
    step_cost: dict[tuple[str, int], dict[int, float]] = {}
    eval_cost: dict[tuple[str, int], dict[str, float]] = {}
    for arch, channels in families:
        depths = sorted(sh.layers for sh in shapes if (sh.architecture, sh.channels) == (arch, channels))
        measured = {}
        for depth in sorted({depths[0], depths[-1]}):
            shape = Shape(arch, channels, depth)
            kind = _costliest(kinds_at[shape], depth)
            measured[depth] = measure_step(cfg, shape, kind, z_dim, device, steps)
        step_cost[(arch, channels)] = measured
        deepest = Shape(arch, channels, depths[-1])
        eval_cost[(arch, channels)] = {
            f"{mode}/{sim}": measure_evaluation(cfg, deepest, _costliest(kinds_at[deepest], deepest.layers), z_dim, device, mode, sim)
            for mode, sim in cfg.attack.tasks()
        }
    measure_seconds = time.perf_counter() - started

    attacks_per_task = cfg.attack.n_pairs * len(cfg.attack.resolved_lams())
    lines = []
    where = (f"GPU {device_name}" if on_gpu else
             f"CPU {device_name}, {threads} thread(s) = cpus_per_trial, no GPU present")
    lines.append(f"plan for {gpus:g} GPUs, measured on this device: {where} (torch {torch.__version__}, "
                 f"{measure_seconds:.0f}s of measurement)")
    if on_gpu:
        lines.append("  GPU figures are measured on this GPU")
    elif gpu_speedup:
        lines.append(f"  GPU figures = this CPU's / {speedup:g} (--gpu-speedup {speedup:g}: an assumption, "
                     "not a measurement)")
    else:
        lines.append("  no GPU here: the figures are this CPU's, i.e. they assume a GPU is no faster "
                     "(pass --gpu-speedup X, X = GPU images/s / CPU images/s from benchmarks/train_step.py)")
    lines.append("")
    lines.append(f"  training ({cfg.train.steps:,} steps x batch {cfg.train.batch_size} per trial; "
                 f"deepest and shallowest measured, depths between interpolated)")
    header = f"    {'architecture':12s} {'ch':>2s} {'L':>2s} {'trials':>6s} {'s/step':>8s} {'h/trial':>8s} {'GPU-h':>10s}"
    lines.append(header)
    train_hours, longest = 0.0, 0.0
    for shape in sorted(shapes, key=lambda sh: (sh.architecture, sh.channels, sh.layers)):
        per_step = _interpolate(step_cost[(shape.architecture, shape.channels)], shape.layers) / speedup
        hours = per_step * cfg.train.steps / 3600
        longest = max(longest, hours)
        train_hours += hours * shapes[shape]
        mark = "" if shape.layers in step_cost[(shape.architecture, shape.channels)] else "*"
        lines.append(f"    {shape.architecture:12s} {shape.channels:2d} {shape.layers:2d} {shapes[shape]:6d} "
                     f"{per_step:7.3f}{mark or ' '} {hours:8.2f} {hours * shapes[shape]:10,.1f}")
    lines.append("    (* interpolated)")
    evaluation_batches = (cfg.train.eval_size + len(cfg.train.noise_sigmas) * cfg.train.noise_samples) / cfg.train.batch_size
    lines.append(f"    evaluation after training: ~{evaluation_batches:.0f} forward batches per trial, "
                 f"{100 * evaluation_batches / cfg.train.steps:.2f}% of the steps: left out")

    lines.append("")
    lines.append(f"  attacks ({attacks_per_task:,} per (checkpoint, mode): {cfg.attack.n_pairs} pairs x "
                 f"{len(cfg.attack.resolved_lams())} lambdas; solver {cfg.attack.solver}, "
                 f"{evals:,.0f} evaluations/attack "
                 + ("(--evals-per-attack)" if evals_per_attack else "(the solver's limit, min(maxiter, maxfun): an upper bound; "
                    "set --evals-per-attack from benchmarks/attack.py)") + ")")
    lines.append(f"    {'architecture':12s} {'ch':>2s} {'mode':14s} {'checkpoints':>11s} {'ms/eval':>8s} {'s/attack':>9s} {'GPU-h':>10s}")
    attack_hours = 0.0
    checkpoints = Counter((shape_of(cfg, s).architecture, shape_of(cfg, s).channels) for s in specs)
    for family in families:
        for task, seconds in eval_cost[family].items():
            per_eval = seconds / speedup
            per_attack = per_eval * evals
            hours = per_attack * attacks_per_task * checkpoints[family] / 3600
            attack_hours += hours
            lines.append(f"    {family[0]:12s} {family[1]:2d} {task:14s} {checkpoints[family]:11d} "
                         f"{1000 * per_eval:8.2f} {per_attack:9.2f} {hours:10,.1f}")
    lines.append("    (ms/eval on the deepest model of the architecture: an upper estimate for shallower ones)")

    total = train_hours + attack_hours
    train_wall = max(train_hours / gpus, longest)
    attack_wall = attack_hours / gpus
    lines.append("")
    lines.append(f"  total: {len(specs)} trials, {len(specs) * attacks_per_task * len(cfg.attack.tasks()):,} attacks")
    lines.append(f"    GPU-hours: {train_hours:,.1f} training + {attack_hours:,.1f} attacks = {total:,.1f}")
    lines.append(f"    wall time on {gpus:g} GPUs: {_duration(train_wall)} training (the longest trial alone: "
                 f"{_duration(longest)}) + {_duration(attack_wall)} attacks = {_duration(train_wall + attack_wall)}")
    res = cfg.resources
    if res.gpus_per_trial and res.gpus_per_trial < 1:
        lines.append(f"    (trials ask for {res.gpus_per_trial:g} GPU: {int(1 / res.gpus_per_trial)} share a GPU, "
                     "which helps only while one trial leaves the GPU idle; the estimate assumes perfect packing)")
    return "\n".join(lines)


def _costliest(names: set[str], layers: int) -> str:
    """The kind to time at a depth: the one whose decoder reads the most layers (the kinds'
    objectives cost the same; Seatbelt's decoder input is L times wider)."""
    return max(sorted(names), key=lambda name: len(kinds.get(name).decoded_layers(layers)))


def _interpolate(points: dict[int, float], depth: int) -> float:
    if depth in points:
        return points[depth]
    (lo, a), (hi, b) = min(points.items()), max(points.items())
    return a + (b - a) * (depth - lo) / (hi - lo)


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"
