"""The Parquet schemas of the results folder (docs/CONTRACTS.md), one place for every writer
(the sweep, the synthetic writer) and reader (analysis).

Every file of a dataset is written with the full schema, missing values as nulls, so readers
can open a folder of files from different trials (ok, diverged, failed) as one table.

The identity of a row comes in three nested sets, each with one name used everywhere (Parquet,
MLflow params and tags, Tune's trial config):

* ``GRID_FIELDS``: the trial's point of the grid (dataset, model, beta, layers, z_dim, seed);
* ``TRIAL_FIELDS``: ``trial_id`` and the grid fields, the identity of a ``noise/`` or
  ``gallery/`` row;
* ``IDENTITY_FIELDS``: the sweep's name and the trial fields, the identity of a ``train/`` or
  ``attacks/`` row.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from results.vocabulary import ELBO

GRID_FIELDS = ("dataset", "model", "beta", "layers", "z_dim", "seed")
TRIAL_FIELDS = ("trial_id", *GRID_FIELDS)
IDENTITY_FIELDS = ("sweep", *TRIAL_FIELDS)

_IDENTITY_TYPES = {"sweep": pa.string(), "trial_id": pa.string(), "dataset": pa.string(),
                   "model": pa.string(), "beta": pa.float64(), "layers": pa.int64(),
                   "z_dim": pa.int64(), "seed": pa.int64()}
IDENTITY = [(name, _IDENTITY_TYPES[name]) for name in IDENTITY_FIELDS]

# The held-out ELBO of a trained model (nats per image), a column of train/. It is the quantity
# the output attack's similarity measures (as −ELBO of the target), so the word is spelled once,
# in results.vocabulary; code that means the training metric names it by this constant.
TRAIN_ELBO = ELBO

TRAIN = pa.schema(IDENTITY + [
    ("status", pa.string()),
    ("reason", pa.string()),
    ("steps", pa.int64()),
    ("seconds", pa.float64()),
    ("images_per_s", pa.float64()),
    ("precision", pa.string()),  # float32 | bfloat16: what autocast trained it in (models.speed)
    ("node_id", pa.string()),  # the Ray node that trained it
    ("health", pa.string()),   # healthy | plateau | crippled | collapsed (sweep.train.health)
    ("health_reason", pa.string()),
    ("eval_images", pa.int64()),
    (TRAIN_ELBO, pa.float64()),
    ("elbo_mean_image", pa.float64()),
    ("recon_loglik", pa.float64()),
    ("recon_r2", pa.float64()),  # pixel variance the reconstructions explain over the mean image
    ("kl_layers", pa.list_(pa.float64())),
    ("active_units", pa.list_(pa.int64())),
    ("logvar_at_bound", pa.list_(pa.float64())),
    ("dead_first_layer", pa.float64()),  # share of the encoder's first-layer units never active
    ("index_code_mi", pa.float64()),
    ("tc", pa.float64()),
    ("dim_kl", pa.float64()),
    ("mig", pa.float64()),
    ("mig_images", pa.int64()),
    ("encoder_l2", pa.float64()),
    ("decoder_l2", pa.float64()),
    ("clean_loglik_mean", pa.float64()),
    ("noise_loglik_mean", pa.float64()),
    ("noise_loglik_median", pa.float64()),
])

NOISE = pa.schema(IDENTITY[1:] + [
    ("sigma", pa.float64()),
    ("sample", pa.int64()),
    ("loglik", pa.float64()),
])

# an attack's reporting metrics, measured on its result (attacks.run.attack_metrics): ‖d‖,
# ‖rec(x*) − x^t‖, −log p(x^t | z*), ‖x − x^t‖, ‖rec(x) − x^t‖ and ‖rec(x^t) − x^t‖
ATTACK_METRICS = ("distortion_l2", "adv_target_l2", "target_nll", "source_target_l2",
                  "rec_source_target_l2", "rec_target_target_l2")

ATTACKS = pa.schema(IDENTITY + [
    ("mode", pa.string()),
    ("similarity", pa.string()),
    ("pair", pa.int64()),
    ("source_index", pa.int64()),
    ("target_index", pa.int64()),
    ("lam", pa.float64()),
    ("objective", pa.float64()),       # reported Δ (output mode: mean over fresh draws)
    ("objective_se", pa.float64()),    # its Monte-Carlo standard error (0 when deterministic)
    ("distance", pa.float64()),
    ("delta_minimised", pa.float64()), # Δ the solver ended on (its own fixed draws)
    ("delta_clean", pa.float64()),     # Δ at d = 0 on the reporting draws (latent: the clean
                                       #   distance r(q(z|x), q(z|x^t)))
    ("worse_than_clean", pa.bool_()),  # objective > delta_clean + 3 objective_se (+ rounding)
    ("from_path", pa.bool_()),         # d is another λ's solution of the pair, or d = 0, which
                                       #   beat the solver's own (attacks.envelope)
] + [(name, pa.float64()) for name in ATTACK_METRICS] + [
    ("selected", pa.bool_()),
    ("auddc", pa.float64()),
    ("budget_50", pa.float64()),       # latent: smallest ‖d‖ on the pair's λ path that removes
    ("budget_90", pa.float64()),       #   half / 90% of delta_clean (per pair; NaN for output)
    ("auddc_reason", pa.string()),  # why auddc is NaN; empty when it is defined
    ("solver", pa.string()),
    ("iterations", pa.int64()),
    ("evaluations", pa.int64()),   # objective + gradient evaluations (--plan reads them)
    ("seconds", pa.float64()),
])

ATTACK_KEY = ("trial_id", "mode", "similarity", "pair", "lam")  # one row per key

# the six pictures of the paper's Fig. 1 per pair, uint8 H×W×C each: the source, its
# reconstruction, x + d, d itself, the reconstruction of x + d and the target
GALLERY_PANELS = ("input", "reconstruction", "adversarial", "distortion",
                  "adversarial_reconstruction", "target")

GALLERY = pa.schema(IDENTITY[1:] + [
    ("mode", pa.string()),
    ("similarity", pa.string()),
    ("pair", pa.int64()),
    ("lam", pa.float64()),             # the λ shown (Fig. 1)
    ("paper_lam", pa.float64()),       # the λ the paper's rule picks (the row marked selected)
    ("paper_lam_unmoved", pa.bool_()), # its attack left the input unmoved (the d = 0 plateau):
                                       #   lam is then the rule's pick among the λ that moved it
    ("channels", pa.int64()),
    ("height", pa.int64()),
    ("width", pa.int64()),
] + [(panel, pa.binary()) for panel in GALLERY_PANELS])


def table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as a table of exactly ``schema``: extra keys are dropped, missing ones are null."""
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def conform(columns: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """Columns (lists or arrays of equal length) as a table of exactly ``schema``, the way
    ``table`` does rows: extra columns are dropped, missing ones are null."""
    length = len(next(iter(columns.values()))) if columns else 0
    arrays = [pa.array(columns[f.name], type=f.type) if f.name in columns else pa.nulls(length, f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
