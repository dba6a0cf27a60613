"""Where each thing lives in a results folder (``--out``), relative to it (docs/CONTRACTS.md).

Every name is a function or a constant here, and every encoding (the trial id, the attack part
file names) sits beside its parser, so the sweep that writes a folder and the analysis that
reads it cannot disagree.
"""

from __future__ import annotations

import re

SWEEP_JSON = "sweep.json"        # the resolved config (results.records)
TRACKING_JSON = "tracking.json"  # the MLflow run of the sweep (results.records)
LOCK = "sweep.lock"              # held while a sweep writes the folder (sweep.lock)
TUNE = "tune"                    # Ray Tune's experiment state and checkpoints
TRAIN = "train"                  # one Parquet file per trial, written last: the completion mark
NOISE = "noise"
ATTACKS = "attacks"              # one Parquet file per attack task, under the trial's folder
GALLERY = "gallery"              # the same names as attacks/, holding the pictures
CHECKPOINTS = "checkpoints"
REPORT = "report"
REPORT_INDEX = "report/index.html"


def trial_id(dataset: str, model: str, beta: float, layers: int, z_dim: int, seed: int) -> str:
    """The readable id of a grid point, stable across resumes: ``dsprites-seatbelt-b4-L3-z10-s0``
    (a fractional β is written with a ``p``: ``b2p5``)."""
    b = f"{beta:g}".replace(".", "p")
    return f"{dataset}-{model}-b{b}-L{layers}-z{z_dim}-s{seed}"


def checkpoint_file(trial_id: str) -> str:
    """The final model file of a finished trial."""
    return f"{CHECKPOINTS}/{trial_id}.pt"


def train_file(trial_id: str) -> str:
    return f"{TRAIN}/{trial_id}.parquet"


def noise_file(trial_id: str) -> str:
    return f"{NOISE}/{trial_id}.parquet"


def attack_file(trial_id: str, mode: str, similarity: str, first: int, last: int) -> str:
    """The rows of one attack task: a trial's pairs ``first..last`` in one (mode, similarity)."""
    return f"{ATTACKS}/{trial_id}/{mode}-{similarity}-p{first:03d}-{last:03d}.parquet"


# the inverse of attack_file
_ATTACK_FILE = re.compile(rf"^{ATTACKS}/(?P<trial>[^/]+)/(?P<mode>[a-z]+)-(?P<sim>[a-z0-9_]+)"
                          r"-p(?P<first>\d+)-(?P<last>\d+)\.parquet$")


def parse_attack_file(relpath: str) -> tuple[str, str, str, int, int] | None:
    """(trial_id, mode, similarity, first pair, last pair) of an ``attack_file`` path, or None."""
    match = _ATTACK_FILE.match(relpath)
    if match is None:
        return None
    return (match["trial"], match["mode"], match["sim"], int(match["first"]), int(match["last"]))


def gallery_file(attack_relpath: str) -> str:
    """The pictures of the attack task whose rows are at ``attack_relpath``."""
    return attack_relpath.replace(f"{ATTACKS}/", f"{GALLERY}/", 1)
