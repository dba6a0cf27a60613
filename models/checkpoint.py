"""One-file checkpoints that are safe to load.

The file is a torch.save'd dict: a format tag and version, the config as a plain dict, the
state dict, the training step and a JSON-able ``extra`` dict. Loading uses
``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and plain containers,
so a crafted file cannot run code; anything that is not exactly our format raises
CheckpointError with the path and what to do.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.config import ModelConfig
from models.errors import CheckpointError, ConfigError
from models.hierarchical import HierarchicalVAE, build_model

FORMAT = "seatbelt-vae-checkpoint"
# 2: the decoder's mean-image offset and the anchored conditional priors (version 1 files
# would load into a different model)
# 3: ModelConfig.encoder_input (default centred); a version 2 file was trained on 2x - 1 and
# loads as the model it is, with encoder_input "symmetric"
VERSION = 3
READABLE = (2, 3)


def save_checkpoint(path: str | os.PathLike, model: HierarchicalVAE, step: int,
                    extra: dict[str, Any] | None = None) -> None:
    """Write the checkpoint atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    extra = {} if extra is None else extra
    try:
        extra = json.loads(json.dumps(extra))   # plain JSON types only, so weights_only can load it
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot save {path}: extra must be a JSON-able dict ({e})") from e
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.cfg.to_dict(),
        "state_dict": model.state_dict(),
        "step": int(step),
        "extra": extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, int, dict]:
    """(model in eval mode, step, extra); CheckpointError if the file is missing or not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path, or re-run the "
                              "training that writes it")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:   # random bytes, or a pickle asking for arbitrary objects
        raise CheckpointError(f"checkpoint {path} cannot be read safely: it is corrupt, or it holds "
                              "Python objects other than tensors and plain containers (refused: "
                              "unpickling them can run code). Delete it and re-run the training "
                              "that writes it; do not load it by other means unless you trust "
                              "where it came from") from e
    except Exception as e:   # truncated zip archive, I/O errors
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: delete it and re-run "
                              f"the training that writes it [{type(e).__name__}: {_first_line(e)}]") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file (a bare state dict or another "
                              "program's file?): point to a checkpoint written by save_checkpoint")
    if payload.get("version") not in READABLE:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')!r}, "
                              f"this code reads versions {', '.join(map(str, READABLE))}: use the "
                              "matching code version")
    try:
        config = payload["config"]
        if payload["version"] == 2 and isinstance(config, dict):
            config = {"encoder_input": "symmetric", **config}
        model = build_model(ModelConfig.from_dict(config))
        model.load_state_dict(payload["state_dict"])
    except (ConfigError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this code's models "
                              f"[{type(e).__name__}: {_first_line(e)}]: re-train, or load it with "
                              "the code version that wrote it") from e
    model.to(next(iter(payload["state_dict"].values())).device if payload["state_dict"] else "cpu")
    model.eval()
    step, extra = payload.get("step"), payload.get("extra")
    if not isinstance(step, int) or not isinstance(extra, dict):
        raise CheckpointError(f"checkpoint {path} has a bad step or extra field: re-write it")
    return model, step, extra


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else ""
