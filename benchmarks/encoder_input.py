"""Which encoder input keeps the first layer alive? The candidates of ``ModelConfig.encoder_input``
trained at equal steps, same seed, same batches, on the generated dSprites.

    python benchmarks/encoder_input.py --out DIR [--setups mlp1200,mlp128,conv,shapes] [--jobs 2]

Setups (beta-TCVAE, the project's training path: mean-image offset, prepare_for_training,
models.speed's precision and Adam):

* ``mlp1200``: the paper's MLP (Chen et al.), beta 6, batch 256, lr 1e-3;
* ``mlp128``: the repro preset's network, width 128, beta 4, batch 128, lr 3e-3, free bits 1;
* ``conv``: the paper's conv net (batch norm after every convolution), beta 6, batch 64, lr 1e-3;
* ``shapes``: a background that is not 0: the grey shapes of tests/test_sweep_health.py's folder
  test (160 PNGs, Gaussian likelihood, backgrounds 0.04-0.16), its beta-TCDLGM (L 2, |z| 4, beta
  4, MLP 64, batch 32, lr 1e-2, 150 steps), seeds ``--seed`` to ``--seed + 2``.

For each setup x input it prints the share of the encoder's first-layer units that never
activate on 1,024 held-out images (``sweep.train.evaluate.dead_first_layer``) along the run, then
the held-out ELBO, recon_r2 and MIG (4,096 held-out images, ``benchmarks/fidelity.score``; MIG
where the data has factors) at the end, and writes ``<setup>-<input>-recon.png`` (16 held-out images above their reconstructions)
under DIR. It ends with one line per setup and input:

    encoder_input <setup> <input>: dead <d>% (max over the run <m>%), ELBO <e>, MIG <g>, recon_r2 <r>

(``shapes``: one line per seed.)
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fidelity import DATASET, HELD_OUT, save_reconstructions, score  # noqa: E402
from models import ModelConfig, build_model  # noqa: E402
from models.config import ENCODER_INPUTS  # noqa: E402
from models.device import prepare_for_training  # noqa: E402
from models.speed import TrainingPrecision, adam, configure_device  # noqa: E402
from results.schema import TRAIN_ELBO  # noqa: E402
from sweep.data import load_dataset  # noqa: E402
from recon_r2 import shapes_folder  # noqa: E402
from sweep.train.evaluate import dead_first_layer, elbo_parts, recon_r2  # noqa: E402
from train_step import train_step  # noqa: E402


@dataclass(frozen=True)
class Setup:
    dataset: str
    kind: str
    layers: int
    z_dim: int
    architecture: str
    hidden_dim: int | None
    beta: float
    batch_size: int
    lr: float
    free_bits: float
    steps: int


SETUPS = {
    "mlp1200": Setup(DATASET, "tcvae", 1, 10, "mlp", None, 6.0, 256, 1e-3, 0.0, 1500),
    "mlp128": Setup(DATASET, "tcvae", 1, 10, "mlp", 128, 4.0, 128, 3e-3, 1.0, 1000),
    "conv": Setup(DATASET, "tcvae", 1, 10, "conv", None, 6.0, 64, 1e-3, 0.0, 600),
    "shapes": Setup("folder", "tcdlgm", 2, 4, "mlp", 64, 4.0, 32, 1e-2, 0.0, 150),
}
SHAPES_SEEDS = 3
DEAD_AT = (0, 10, 40, 100, 300)   # steps where the dead share is measured (and every 500, and the end)


def run(job: tuple[str, str, int, int | None, str]) -> dict:
    name, encoder_input, seed, steps, out = job
    setup = SETUPS[name]
    steps = steps or setup.steps
    torch.set_num_threads(1)
    if setup.dataset == "folder":   # made once by main()
        data = load_dataset("folder", data_dir=Path(out) / "shapes", seed=0, held_out=0.25)
    else:
        data = load_dataset(setup.dataset, seed=0, held_out=HELD_OUT)
    held = data.evaluation_indices(4096, seed=0)
    images = data.batch(held)
    factors = data.factors_of(held) if data.factor_sizes else None
    mean_image = data.pixel_statistics("train")[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configure_device(device)

    torch.manual_seed(seed)   # the same initial weights for every input
    cfg = ModelConfig(kind=setup.kind, layers=setup.layers, z_dim=setup.z_dim, beta=setup.beta,
                      architecture=setup.architecture, hidden_dim=setup.hidden_dim, likelihood=data.likelihood,
                      free_bits=setup.free_bits, dataset_size=len(data.train_indices), encoder_input=encoder_input)
    model = build_model(cfg)
    model.set_mean_image(mean_image)
    model = prepare_for_training(model, device).train()
    precision = TrainingPrecision.choose(model, device, "auto")
    optimizer = adam(model.parameters(), setup.lr, device)
    batches = torch.Generator().manual_seed(seed)   # the same batches for every input
    torch.manual_seed(seed + 1)                     # the same noise draws
    curve, started = [], time.perf_counter()
    for step in range(steps + 1):
        if step in DEAD_AT or step % 500 == 0 or step == steps:
            model.eval()
            curve.append((step, dead_first_layer(model, images[:1024].to(device), 256)))
            model.train()
        if step == steps:
            break
        x = data.sample_batch(batches, setup.batch_size).to(device)
        train_step(model, x, precision, optimizer)
    point = score(model, images, factors, mean_image, data, device) if data.factor_sizes else \
        _score_without_factors(model, images, mean_image)
    model = model.cpu().eval()
    label = f"{name} {encoder_input}" + (f" seed {seed}" if name == "shapes" else "")
    save_reconstructions(model, images[:16], Path(out) / f"{label.replace(' ', '-')}-recon.png")
    result = dict(label=label, steps=steps, curve=curve, minutes=(time.perf_counter() - started) / 60,
                  held_out_elbo=point[TRAIN_ELBO], mig=point["mig"], recon_r2=point["recon_r2"], factors=point["factors"])
    print(f"{label}: dead along the run " + ", ".join(f"{s}: {d:.0%}" for s, d in curve)
          + f"; {result['minutes']:.1f} min", flush=True)
    return result


@torch.no_grad()
def _score_without_factors(model, images, mean_image) -> dict:
    model.eval()
    cpu = model.to("cpu")
    return {"mig": float("nan"), TRAIN_ELBO: elbo_parts(cpu, images, 512)[TRAIN_ELBO],
            "recon_r2": recon_r2(cpu, images, mean_image, 512), "factors": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the reconstruction pictures")
    ap.add_argument("--setups", default="mlp1200,mlp128,conv,shapes", help=f"comma separated, of {', '.join(SETUPS)}")
    ap.add_argument("--inputs", default=",".join(ENCODER_INPUTS), help="encoder inputs to compare")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the setup's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    setups = args.setups.split(",")
    if "shapes" in setups and not (Path(args.out) / "shapes").exists():
        shapes_folder(Path(args.out) / "shapes")
    jobs = [(s, i, seed, args.steps, args.out) for s in setups for i in args.inputs.split(",")
            for seed in range(args.seed, args.seed + (SHAPES_SEEDS if s == "shapes" else 1))]
    with futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(run, jobs))
    print()
    for r in results:
        factors = "  ".join(f"{k} {v['best_mi']:.2f}/{v['gap']:.2f}" for k, v in r["factors"].items())
        print(f"encoder_input {r['label']}: dead {r['curve'][-1][1]:.0%} (max over the run "
              f"{max(d for _, d in r['curve']):.0%}), ELBO {r['held_out_elbo']:.1f}, MIG {r['mig']:.3f}, "
              f"recon_r2 {r['recon_r2']:.2f}, steps {r['steps']}  [factor: I nats / gap] {factors}")


if __name__ == "__main__":
    main()
