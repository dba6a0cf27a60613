"""Fidelity: do the models reach the paper's regime? beta-TCVAE (beta 6) and the VAE (beta 1)
trained on the full generated dSprites, scored along the way against images seen.

    python benchmarks/fidelity.py --out DIR [--images 36864000] [--batch-size 2048] [--jobs 2]

The paper's claims are about disentangled models. The anchor is Chen et al. (2018, beta-TCVAE):
on dSprites, with this MLP (4096-1200-1200-2|z|, decoder |z|-1200-1200-1200-4096), beta-TCVAE
reaches a MIG well above 0.3 at beta >= 4 (README, "Models in the paper's regime").

Each model trains with the project's own pieces, as a sweep trial trains it: ``build_model``, the
mean-image offset, ``prepare_for_training``, ``models.speed`` (bf16 autocast where measured
faster, fused Adam) and the recipe's settings, by default the anchor's: Adam lr 1e-3, batch 2048,
MWS, 50 epochs (36,864,000 images; ``--images``, ``--batch-size``, ``--lr``, ``--tc-estimator``,
``--encoder-input``: the sweep's ``centred`` by default, the reference code's ``pixels``).
On this 2-core CPU one model with both cores (``--models tcvae:6``) trains at ~5,000 images/s,
evaluations included (the streaming TC estimator, ``models.tc``), so the full recipe takes ~2 h;
the default two models, one core each, ~3.5 h. ``--images`` shortens it, and a re-run resumes.
Every ``--eval-every`` images it prints one curve line per model:

* MIG on ``--eval-images`` held-out images (``sweep.train.evaluate.mig_factors``, Chen et al.'s four
  factors: scale, orientation, x, y), and each factor's best I(z_j; v_k) in nats with its gap;
* the held-out ELBO (``sweep.train.evaluate.elbo_parts``, nats per image) and recon_r2;
* minutes so far.

It writes under DIR, per model: ``<kind>-b<beta>.pt`` (the final model, loadable with
``models.checkpoint.load_checkpoint``), ``<kind>-b<beta>-recon.png`` (16 held-out images above
their reconstructions), ``<kind>-b<beta>-curve.jsonl`` (the curve) and a training state it
resumes from when re-run after an interruption. It ends with one line per model:

    fidelity <kind>-b<beta>: MIG <m>, ELBO <e>, images <n>, minutes <t>

``--jobs`` models train at once, each in its own process with cores / jobs threads (on this
2-core machine: both at once, one core each).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models import ModelConfig, build_model, save_checkpoint  # noqa: E402
from models.config import ENCODER_INPUTS  # noqa: E402
from models.device import prepare_for_training  # noqa: E402
from models.speed import TrainingPrecision, adam, configure_device  # noqa: E402
from results.schema import TRAIN_ELBO  # noqa: E402
from sweep.data import load_dataset  # noqa: E402
from sweep.train.evaluate import elbo_parts, mean_gap, mig_factors, posteriors, recon_r2  # noqa: E402
from train_step import train_step  # noqa: E402

DATASET = "dsprites_generated"
HELD_OUT = 0.05     # 36,864 held-out images, of which --eval-images are scored
ELBO_IMAGES = 2048  # held-out images for the ELBO and recon_r2 (the MIG needs more)


@dataclass(frozen=True)
class Recipe:
    kind: str
    beta: float
    images: int
    batch_size: int
    lr: float
    tc_estimator: str
    precision: str
    eval_every: int
    eval_images: int
    seed: int
    threads: int
    out: str
    encoder_input: str = "centred"

    @property
    def name(self) -> str:
        return f"{self.kind}-b{self.beta:g}"

    def model_config(self, dataset_size: int) -> ModelConfig:
        return ModelConfig(kind=self.kind, beta=self.beta, z_dim=10, architecture="mlp",
                           tc_estimator=self.tc_estimator, dataset_size=dataset_size,
                           encoder_input=self.encoder_input)


def train(recipe: Recipe) -> dict:
    """Train one model to ``recipe.images`` images seen, scoring it along the way; resumes."""
    torch.set_num_threads(recipe.threads)
    out = Path(recipe.out)
    state_file, curve_file = out / f"{recipe.name}.train.pt", out / f"{recipe.name}-curve.jsonl"
    data = load_dataset(DATASET, seed=0, held_out=HELD_OUT)
    held = data.evaluation_indices(recipe.eval_images, seed=0)
    images, factors = data.batch(held), data.factors_of(held)
    mean_image = data.pixel_statistics("train")[0]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configure_device(device)
    torch.manual_seed(recipe.seed)   # the initial weights
    model = build_model(recipe.model_config(len(data.train_indices)))
    model.set_mean_image(mean_image)
    model = prepare_for_training(model, device).train()
    precision = TrainingPrecision.choose(model, device, recipe.precision)
    optimizer = adam(model.parameters(), recipe.lr, device)
    seen, seconds = 0, 0.0
    if state_file.exists():
        state = torch.load(state_file, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        seen, seconds = state["images"], state["seconds"]
        print(f"{recipe.name}: resuming at {seen:,} images", flush=True)
    else:
        curve_file.unlink(missing_ok=True)

    batches = torch.Generator().manual_seed(recipe.seed * 1_000_003 + seen)
    torch.manual_seed(recipe.seed * 7919 + seen)
    started = time.perf_counter()
    next_eval = (seen // recipe.eval_every + 1) * recipe.eval_every
    while seen < recipe.images:
        x = data.sample_batch(batches, recipe.batch_size).to(device)
        train_step(model, x, precision, optimizer)
        seen += recipe.batch_size
        if seen >= next_eval or seen >= recipe.images:
            next_eval += recipe.eval_every
            point = score(model, images, factors, mean_image, data, device)
            point.update(images=seen, minutes=(seconds + time.perf_counter() - started) / 60,
                         precision=precision.name)
            _print_point(recipe.name, point)
            with curve_file.open("a") as f:
                f.write(json.dumps(point) + "\n")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "images": seen, "seconds": seconds + time.perf_counter() - started},
                       state_file)
    final = json.loads(curve_file.read_text().splitlines()[-1])
    model = model.cpu().eval()
    save_checkpoint(out / f"{recipe.name}.pt", model, seen // recipe.batch_size,
                    extra={"images": seen, "recipe": recipe.__dict__, "mig": final["mig"]})
    save_reconstructions(model, images[:16], out / f"{recipe.name}-recon.png")
    return {"name": recipe.name, **final}


@torch.no_grad()
def score(model, images, factors, mean_image, data, device) -> dict:
    model.eval()
    cpu = model.to("cpu")
    top = posteriors(cpu, images, 512)
    per_factor = mig_factors(top.means[-1], top.logvars[-1], factors, list(data.factor_sizes),
                             list(data.factor_names))
    parts = elbo_parts(cpu, images[:ELBO_IMAGES], 512)
    r2 = recon_r2(cpu, images[:ELBO_IMAGES], mean_image, 512)
    model.to(device).train()
    return {"mig": mean_gap(per_factor), TRAIN_ELBO: parts[TRAIN_ELBO], "recon_r2": r2,
            "factors": {f.name: {"gap": f.gap, "best_mi": max(f.information), "dim": f.best_dimension}
                        for f in per_factor}}


def _print_point(name: str, p: dict) -> None:
    factors = "  ".join(f"{k} {v['best_mi']:.2f}/{v['gap']:.2f} (z{v['dim']})" for k, v in p["factors"].items())
    print(f"{name:10s} images {p['images']:>10,}  {p['minutes']:6.1f} min  MIG {p['mig']:.3f}  "
          f"ELBO {p[TRAIN_ELBO]:8.1f}  recon_r2 {p['recon_r2']:.2f}  [factor: I nats / gap]  {factors}",
          flush=True)


def save_reconstructions(model, images: torch.Tensor, path: Path) -> None:
    """A PNG: the held-out images in the top row, their reconstructions below."""
    from PIL import Image

    with torch.no_grad():
        recon = model.reconstruct(images)
    rows = [torch.cat(list(batch[:, 0]), dim=1) for batch in (images, recon)]
    grid = (torch.cat(rows, dim=0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(grid, mode="L").resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for checkpoints, pictures and curves")
    ap.add_argument("--models", default="tcvae:6,vae:1", help="kind:beta, comma separated")
    ap.add_argument("--images", type=int, default=50 * 737_280, help="training images seen per model")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tc-estimator", default="mws", choices=("mws", "mss"))
    ap.add_argument("--encoder-input", default="centred", choices=ENCODER_INPUTS,
                    help="what the encoder reads (models.config): x minus the mean image, x, or 2x - 1")
    ap.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--eval-every", type=int, default=2_000_000, help="images between curve points")
    ap.add_argument("--eval-images", type=int, default=4096, help="held-out images for MIG (>= 3,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=None, help="models trained at once (default: all, up to the cores)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per model (default: cores / jobs)")
    args = ap.parse_args()

    models = [(kind, float(beta)) for kind, beta in (m.split(":") for m in args.models.split(","))]
    jobs = args.jobs or max(1, min(len(models), os.cpu_count() or 1))
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    recipes = [Recipe(kind, beta, args.images, args.batch_size, args.lr, args.tc_estimator, args.precision,
                      args.eval_every, args.eval_images, args.seed, threads, args.out, args.encoder_input)
               for kind, beta in models]
    print(f"fidelity: {len(recipes)} models on the full generated dSprites, {args.images:,} images each, "
          f"batch {args.batch_size}, lr {args.lr:g}, {args.tc_estimator}, encoder input {args.encoder_input}, "
          f"{jobs} at once x {threads} threads",
          flush=True)
    started = time.perf_counter()
    with futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(train, recipes))
    print(f"\nwall time {(time.perf_counter() - started) / 60:.1f} min; files under {args.out}")
    for r in results:
        print(f"fidelity {r['name']}: MIG {r['mig']:.3f}, ELBO {r[TRAIN_ELBO]:.1f}, images {r['images']}, "
              f"minutes {r['minutes']:.1f}")


if __name__ == "__main__":
    main()
