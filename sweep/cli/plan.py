"""Resource planning: what a sweep costs on GPUs, from a measurement on this device.

    python -m sweep.grid --preset paper --dry-run --plan --gpus 16 [--gpu-speedup 25]

Measures, on this machine's device (the first CUDA GPU if there is one, else the CPU with the
threads one trial gets), a few full training steps (objective, backward, Adam) of the grid's
shallowest and deepest model of each architecture at the trial's batch size and widths, and the
seconds per objective evaluation of each attack mode on the deepest model with the configured
solver; then multiplies out:

* training: trials x steps x seconds/step (depth in between: interpolated linearly in L);
* attacks: checkpoints x attacks x evaluations/attack x seconds/evaluation.

Without a GPU the figures are this CPU's; ``--gpu-speedup`` (how many times faster one GPU is,
e.g. from ``benchmarks/train_step.py`` run on both) turns them into GPU figures, and the output
says which it did. Evaluations per attack depend on the trained models, so they are measured:
the mean of the ``evaluations`` column of the sweep's own ``attacks/`` rows when its results
folder (``--out``, same config fingerprint) holds some with the configured solver
(``evaluations_from_rows``), else, for each architecture without rows, by attacking a briefly
trained model (``calibrate_evaluations``); ``--evals-per-attack`` overrides both. The output
says which it used, and the training and attack shares of the GPU-hours.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from results import kinds
from sweep.config import ModelData, SweepConfig, TrainConfig, model_config_for
from sweep.config.trials import TrialSpec
from sweep.data import dataset_spec


@dataclass(frozen=True)
class Shape:
    """What sets the cost of a model: architecture, image channels, depth."""

    architecture: str
    channels: int
    layers: int


def shape_of(cfg: SweepConfig, spec: TrialSpec) -> Shape:
    return Shape(cfg.train.architecture_for(spec.dataset), dataset_spec(spec.dataset).channels, spec.layers)


def _model(cfg: SweepConfig, trial: TrialSpec):
    """The model ``trial`` trains, built as the trainable builds it (without reading its data)."""
    from models import build_model

    return build_model(model_config_for(trial, cfg.train, ModelData.planned(trial.dataset)))


def _images(model, n: int, device):
    """``n`` random images of the model's shape: binary ones for a Bernoulli likelihood."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, model.cfg.channels, model.cfg.image_size, model.cfg.image_size, generator=g)
    return (x > 0.5).float().to(device) if model.cfg.likelihood == "bernoulli" else x.to(device)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(cfg: SweepConfig, trial: TrialSpec, device, steps: int) -> float:
    """Seconds of one full training step of ``trial``'s model (the fastest of ``steps``, after
    one warm-up step)."""
    import torch

    from models.device import prepare_for_training
    from models.speed import TrainingPrecision, adam, configure_device

    # Timed as sweep.train.trainable trains it (layout, precision, optimiser), so the plan's estimate
    # matches the real steps.
    configure_device(device)
    model = prepare_for_training(_model(cfg, trial), device)
    precision = TrainingPrecision.choose(model, device, cfg.train.precision)
    optimizer = adam(model.parameters(), cfg.train.lr, device)
    x = _images(model, cfg.train.batch_size, device)
    times = []
    for i in range(steps + 1):
        _sync(device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = model.objective(x).loss
        loss.backward()
        optimizer.step()
        _sync(device)
        if i:  # the first step warms up
            times.append(time.perf_counter() - started)
    return min(times)  # the fastest: a shared machine only ever slows a step down


def measure_evaluation(cfg: SweepConfig, trial: TrialSpec, device, mode: str, similarity: str) -> float:
    """Seconds per objective+gradient evaluation of one attack with the configured solver: one
    problem for scipy (it solves one at a time), a batch of a task's size (at most 64) for the
    batched solver, whose cost per evaluation is the batch's share."""
    import torch

    from attacks.run import attack_problems
    from attacks.solvers import solves_in_batches

    model = _model(cfg, trial).to(device).eval()
    P = (min(64, cfg.resources.resolved_pairs_per_task(cfg.attack) * len(cfg.attack.resolved_lams()))
         if solves_in_batches(cfg.attack.solver) else 1)
    x, target = _images(model, 2 * P, device).split(P)
    lams = torch.full((P,), 1.0, device=device)
    attack_cfg = dataclasses.replace(cfg.attack, maxiter=6, maxfun=8)
    best = float("inf")
    for _ in range(2):  # the first run warms up
        _sync(device)
        started = time.perf_counter()
        result = attack_problems(model, x, target, lams, mode, similarity, attack_cfg,
                                 list(range(P)), list(range(P, 2 * P)), seed=0).result
        _sync(device)
        best = min(best, (time.perf_counter() - started) / max(1, int(result.evaluations.sum())))
    return best


@dataclass(frozen=True)
class EvaluationCounts:
    """Mean objective evaluations per attack by (architecture, "mode/similarity"), and where
    they come from (printable)."""

    per_task: dict[tuple[str, str], float]
    source: str

    def covers(self, architecture: str, tasks: list[str]) -> bool:
        return all((architecture, task) in self.per_task for task in tasks)


def evaluations_from_rows(cfg: SweepConfig, out: str) -> tuple[EvaluationCounts | None, str]:
    """The mean evaluations per attack, by architecture and mode/similarity, of the attack rows
    in the results folder ``out`` that the configured solver solved; or None and why there are
    none: no such folder, it holds another config's results (its ``sweep.json`` fingerprint
    differs), or it has no attack rows with an ``evaluations`` column (files written before
    the column are skipped)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from results import layout, records
    from results.errors import UserError
    from results.store import Store, is_uri

    if not is_uri(out) and not Path(out.removeprefix("file://")).expanduser().is_dir():
        return None, f"no results folder {out}"
    store = Store(out)
    try:
        _, fingerprint = records.read_sweep(store)
    except UserError:
        return None, f"{store.uri_of(layout.SWEEP_JSON)} missing or unreadable"
    if fingerprint != cfg.fingerprint():
        return None, (f"{store.uri} holds another sweep config's results (fingerprint {fingerprint}, "
                      f"this config {cfg.fingerprint()})")
    wanted = ["dataset", "mode", "similarity", "solver", "evaluations"]
    tables = []
    for relpath in store.list_files(layout.ATTACKS, ".parquet"):
        try:
            tables.append(store.read_table(relpath, columns=wanted))
        except (OSError, pa.ArrowException, ValueError):
            continue  # unreadable (the analysis reports it), or written before the column
    table = pa.concat_tables(tables) if tables else None
    if table is not None:
        table = table.filter(pc.and_(pc.equal(table["solver"], cfg.attack.solver),
                                     pc.is_valid(table["evaluations"])))
    if table is None or table.num_rows == 0:
        return None, (f"{store.uri_of(layout.ATTACKS)} has no attack rows with evaluations "
                      f"(solver {cfg.attack.solver})")
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    grouped = table.group_by(["dataset", "mode", "similarity"]).aggregate(
        [("evaluations", "sum"), ("evaluations", "count")])
    for row in grouped.to_pylist():
        key = (cfg.train.architecture_for(row["dataset"]), f"{row['mode']}/{row['similarity']}")
        sums[key][0] += row["evaluations_sum"]
        sums[key][1] += row["evaluations_count"]
    return EvaluationCounts(
        {key: total / n for key, (total, n) in sums.items()},
        f"measured: the mean over this sweep's {table.num_rows:,} attack rows "
        f"({store.uri_of(layout.ATTACKS)}, solver {cfg.attack.solver})"), ""


def calibrate_evaluations(cfg: SweepConfig, architectures: list[str], device, steps: int = 200,
                          n_pairs: int = 2, n_lambdas: int = 4, why: str = "") -> EvaluationCounts:
    """Evaluations per attack measured on a briefly trained model of each architecture: a VAE
    (L 1, z 6, hidden width 256) started at the mean image and trained ``steps`` Adam steps
    (lr 3e-3, batch 64) on generated dSprites, then attacked with the configured solver and
    tolerances on ``n_pairs`` held-out pairs at ``n_lambdas`` of the configured λ (spread over
    the grid) in every mode. The mean is over those attacks. ``why``: why calibrate (printed)."""
    import torch

    from attacks.metrics import sample_pairs
    from attacks.run import attack_problems
    from models import build_model
    from sweep.data import load_dataset

    started = time.perf_counter()
    data = load_dataset("dsprites_generated", size=10_000, seed=0, held_out=0.1)
    mean_image = data.pixel_statistics("train", max_images=5_000)[0]
    lams = cfg.attack.resolved_lams()
    picked = sorted({round(i * (len(lams) - 1) / max(1, n_lambdas - 1)) for i in range(n_lambdas)})
    picked = [lams[i] for i in picked]
    pairs = sample_pairs(data.held_out_indices.tolist(), n_pairs, seed=0)
    src = [s for s, _ in pairs for _ in picked]
    tgt = [t for _, t in pairs for _ in picked]
    x, xt = data.batch(src).to(device), data.batch(tgt).to(device)
    lam = torch.tensor(picked * n_pairs, dtype=torch.float32, device=device)
    per_task: dict[tuple[str, str], float] = {}
    for arch in architectures:
        torch.manual_seed(0)
        vae = TrialSpec("dsprites_generated", "vae", 1.0, 1, 6, 0)
        model = build_model(model_config_for(vae, TrainConfig(architecture=arch, hidden_dim=256), data))
        model.set_mean_image(mean_image)
        model.to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(steps):
            loss = model.objective(data.sample_batch(generator, 64).to(device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        for mode, sim in cfg.attack.tasks():
            result = attack_problems(model, x, xt, lam, mode, sim, cfg.attack, src, tgt,
                                     seed=0).result
            per_task[(arch, f"{mode}/{sim}")] = float(result.evaluations.mean())
    because = f" ({why})" if why else ""
    return EvaluationCounts(
        per_task, f"calibrated{because}: {n_pairs} pairs x {len(picked)} lambdas per mode on a VAE "
        f"({', '.join(architectures)}: L 1, z 6, width 256) trained {steps} steps on generated "
        f"dSprites, solver {cfg.attack.solver} ({time.perf_counter() - started:.0f}s)")


def evaluation_counts(cfg: SweepConfig, architectures: list[str], device, out: str | None = None,
                      evals_per_attack: float | None = None, calibration_steps: int = 200
                      ) -> EvaluationCounts:
    """Evaluations per attack for every (architecture, task) of the sweep: ``evals_per_attack``
    when given; else the sweep's own attack rows in ``out`` for the architectures they cover
    (every task), and a calibration (``calibrate_evaluations``) for the others."""
    tasks = [f"{mode}/{sim}" for mode, sim in cfg.attack.tasks()]
    if evals_per_attack is not None:
        return EvaluationCounts({(a, t): float(evals_per_attack) for a in architectures for t in tasks},
                                "given (--evals-per-attack)")
    rows, why_not = evaluations_from_rows(cfg, out) if out else (None, "no results folder given")
    per_task: dict[tuple[str, str], float] = {}
    sources = []
    if rows is not None:
        covered = [a for a in architectures if rows.covers(a, tasks)]
        per_task.update({(a, t): rows.per_task[(a, t)] for a in covered for t in tasks})
        sources.append(rows.source + ("" if len(covered) == len(architectures) else
                                      f" for {', '.join(covered) or 'no architecture'}"))
    missing = [a for a in architectures if not all((a, t) in per_task for t in tasks)]
    if missing:
        why = why_not if rows is None else "this sweep has no attack rows of them yet"
        calibrated = calibrate_evaluations(cfg, missing, device, steps=calibration_steps, why=why)
        per_task.update(calibrated.per_task)
        sources.append(calibrated.source)
    return EvaluationCounts(per_task, "; ".join(sources))


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
               evals_per_attack: float | None = None, steps: int = 2, out: str | None = None,
               calibration_steps: int = 200) -> str:
    """The plan as printable text (see the module docstring); ``out``: the sweep's results
    folder, whose attack rows give the evaluations per attack when it has some."""
    import torch

    _check_plan_arguments(gpus, evals_per_attack, calibration_steps)
    device, device_name = _device()
    on_gpu = device.type == "cuda"
    threads = max(1, int(cfg.resources.cpus_per_trial))
    if not on_gpu:
        torch.set_num_threads(threads)
    speedup = 1.0 if on_gpu else (gpu_speedup or 1.0)
    costs = measure_costs(cfg, specs, device, steps)
    counts = evaluation_counts(cfg, sorted({a for a, _ in costs.families}), device, out=out,
                               evals_per_attack=evals_per_attack, calibration_steps=calibration_steps)

    where = (f"GPU {device_name}" if on_gpu else
             f"CPU {device_name}, {threads} thread(s) = cpus_per_trial, no GPU present")
    lines = [f"plan for {gpus:g} GPUs, measured on this device: {where} (torch {torch.__version__}, "
             f"{costs.seconds:.0f}s of measurement)"]
    if on_gpu:
        lines.append("  GPU figures are measured on this GPU")
    elif gpu_speedup:
        lines.append(f"  GPU figures = this CPU's / {speedup:g} (--gpu-speedup {speedup:g}: an assumption, "
                     "not a measurement)")
    else:
        lines.append("  no GPU here: the figures are this CPU's, i.e. they assume a GPU is no faster "
                     "(pass --gpu-speedup X, X = GPU images/s / CPU images/s from benchmarks/train_step.py)")
    train_lines, train_hours, longest = _training_lines(cfg, costs, speedup)
    attack_lines, attack_hours = _attack_lines(cfg, specs, costs, counts, speedup)
    return "\n".join([*lines, "", *train_lines, "", *attack_lines, "",
                      *_total_lines(cfg, specs, gpus, train_hours, attack_hours, longest)])


def _check_plan_arguments(gpus: float, evals_per_attack: float | None, calibration_steps: int) -> None:
    from models.errors import UserError

    if gpus <= 0:
        raise UserError("--gpus must be > 0")
    if evals_per_attack is not None and evals_per_attack <= 0:
        raise UserError("--evals-per-attack must be > 0")
    if calibration_steps < 0:
        raise UserError("--calibration-steps must be >= 0")


Family = tuple[str, int]  # (architecture, image channels): the models a cost is measured for


@dataclass(frozen=True)
class Costs:
    """What ``measure_costs`` measured on this device, in seconds."""

    shapes: Counter         # Shape -> trials of the grid with it
    step: dict[Family, dict[int, float]]          # per training step, at the measured depths
    evaluation: dict[Family, dict[str, float]]    # per attack evaluation, by "mode/similarity"
    seconds: float          # how long measuring took

    @property
    def families(self) -> list[Family]:
        return sorted({(sh.architecture, sh.channels) for sh in self.shapes})


def measure_costs(cfg: SweepConfig, specs: list[TrialSpec], device, steps: int) -> Costs:
    """Per (architecture, channels) of the grid: a training step at its shallowest and deepest
    depth, and an evaluation of each attack task on its deepest model."""
    started = time.perf_counter()
    z_dim = max(cfg.grid.z_dims)
    shapes = Counter(shape_of(cfg, s) for s in specs)
    trials_at: dict[Shape, list[TrialSpec]] = defaultdict(list)
    for s in specs:
        trials_at[shape_of(cfg, s)].append(s)
    step_cost: dict[Family, dict[int, float]] = {}
    eval_cost: dict[Family, dict[str, float]] = {}
    for arch, channels in sorted({(sh.architecture, sh.channels) for sh in shapes}):
        depths = sorted(sh.layers for sh in shapes if (sh.architecture, sh.channels) == (arch, channels))
        step_cost[(arch, channels)] = {
            depth: measure_step(cfg, _timed_trial(trials_at[Shape(arch, channels, depth)], z_dim), device, steps)
            for depth in sorted({depths[0], depths[-1]})}
        deepest = _timed_trial(trials_at[Shape(arch, channels, depths[-1])], z_dim)
        eval_cost[(arch, channels)] = {f"{mode}/{sim}": measure_evaluation(cfg, deepest, device, mode, sim)
                                       for mode, sim in cfg.attack.tasks()}
    return Costs(shapes, step_cost, eval_cost, time.perf_counter() - started)


def _timed_trial(trials: list[TrialSpec], z_dim: int) -> TrialSpec:
    """The trial to time for a shape, at the grid's widest z: one of the kind whose decoder
    reads the most layers (the kinds' objectives cost the same; Seatbelt's decoder input is L
    times wider)."""
    layers = trials[0].layers
    kind = max(sorted({t.model for t in trials}), key=lambda name: len(kinds.get(name).decoded_layers(layers)))
    return dataclasses.replace(next(t for t in trials if t.model == kind), z_dim=z_dim)


def _training_lines(cfg: SweepConfig, costs: Costs, speedup: float) -> tuple[list[str], float, float]:
    """The training table, its GPU-hours and the longest trial's hours."""
    lines = [f"  training ({cfg.train.steps:,} steps x batch {cfg.train.batch_size} per trial; "
             f"deepest and shallowest measured, depths between interpolated)",
             f"    {'architecture':12s} {'ch':>2s} {'L':>2s} {'trials':>6s} {'s/step':>8s} {'h/trial':>8s} "
             f"{'GPU-h':>10s}"]
    train_hours, longest = 0.0, 0.0
    shapes = costs.shapes
    for shape in sorted(shapes, key=lambda sh: (sh.architecture, sh.channels, sh.layers)):
        measured = costs.step[(shape.architecture, shape.channels)]
        per_step = _interpolate(measured, shape.layers) / speedup
        hours = per_step * cfg.train.steps / 3600
        longest = max(longest, hours)
        train_hours += hours * shapes[shape]
        mark = "" if shape.layers in measured else "*"
        lines.append(f"    {shape.architecture:12s} {shape.channels:2d} {shape.layers:2d} {shapes[shape]:6d} "
                     f"{per_step:7.3f}{mark or ' '} {hours:8.2f} {hours * shapes[shape]:10,.1f}")
    lines.append("    (* interpolated)")
    evaluation_batches = (cfg.train.eval_size + len(cfg.train.noise_sigmas) * cfg.train.noise_samples) / cfg.train.batch_size
    lines.append(f"    evaluation after training: ~{evaluation_batches:.0f} forward batches per trial, "
                 f"{100 * evaluation_batches / cfg.train.steps:.2f}% of the steps: left out")
    return lines, train_hours, longest


def _attack_lines(cfg: SweepConfig, specs: list[TrialSpec], costs: Costs, counts: EvaluationCounts,
                  speedup: float) -> tuple[list[str], float]:
    """The attack table and its GPU-hours."""
    attacks_per_task = cfg.attack.n_pairs * len(cfg.attack.resolved_lams())
    lines = [f"  attacks ({attacks_per_task:,} per (checkpoint, mode): {cfg.attack.n_pairs} pairs x "
             f"{len(cfg.attack.resolved_lams())} lambdas; solver {cfg.attack.solver})",
             f"    evaluations per attack: {counts.source}",
             f"    {'architecture':12s} {'ch':>2s} {'mode':14s} {'checkpoints':>11s} {'evals':>6s} {'ms/eval':>8s} "
             f"{'s/attack':>9s} {'GPU-h':>10s}"]
    attack_hours = 0.0
    checkpoints = Counter((shape_of(cfg, s).architecture, shape_of(cfg, s).channels) for s in specs)
    for family in costs.families:
        for task, seconds in costs.evaluation[family].items():
            per_eval = seconds / speedup
            evals = counts.per_task[(family[0], task)]
            per_attack = per_eval * evals
            hours = per_attack * attacks_per_task * checkpoints[family] / 3600
            attack_hours += hours
            lines.append(f"    {family[0]:12s} {family[1]:2d} {task:14s} {checkpoints[family]:11d} "
                         f"{evals:6.0f} {1000 * per_eval:8.2f} {per_attack:9.2f} {hours:10,.1f}")
    lines.append("    (ms/eval on the deepest model of the architecture: an upper estimate for shallower ones)")
    return lines, attack_hours


def _total_lines(cfg: SweepConfig, specs: list[TrialSpec], gpus: float, train_hours: float,
                 attack_hours: float, longest: float) -> list[str]:
    total = train_hours + attack_hours
    train_wall = max(train_hours / gpus, longest)
    attack_wall = attack_hours / gpus
    attacks = len(specs) * cfg.attack.n_pairs * len(cfg.attack.resolved_lams()) * len(cfg.attack.tasks())
    lines = [f"  total: {len(specs)} trials, {attacks:,} attacks",
             f"    GPU-hours: {train_hours:,.1f} training + {attack_hours:,.1f} attacks = {total:,.1f} "
             f"(training {100 * train_hours / max(total, 1e-12):.0f}%, "
             f"attacks {100 * attack_hours / max(total, 1e-12):.0f}%)",
             f"    wall time on {gpus:g} GPUs: {_duration(train_wall)} training (the longest trial alone: "
             f"{_duration(longest)}) + {_duration(attack_wall)} attacks = {_duration(train_wall + attack_wall)}"]
    res = cfg.resources
    if res.gpus_per_trial and res.gpus_per_trial < 1:
        lines.append(f"    (trials ask for {res.gpus_per_trial:g} GPU: {int(1 / res.gpus_per_trial)} share a GPU, "
                     "which helps only while one trial leaves the GPU idle; the estimate assumes perfect packing)")
    return lines


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
