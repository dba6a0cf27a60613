"""Models of the Seatbelt-VAE reproduction: VAE, beta-TCVAE, beta-TCDLGM and Seatbelt-VAE.

Plain PyTorch library code (no Ray, MLflow or files other than checkpoints); the public API is
the ``models`` section of docs/CONTRACTS.md.
"""

from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import ModelConfig
from models.distributions import Gaussian
from models.errors import CheckpointError, ConfigError, UserError
from models.hierarchical import Encoding, HierarchicalVAE, Objective, build_model, decoder_l2, encoder_l2
from models.networks import register_architecture

__all__ = [
    "ModelConfig", "build_model", "HierarchicalVAE", "Encoding", "Objective", "Gaussian",
    "save_checkpoint", "load_checkpoint", "register_architecture", "encoder_l2", "decoder_l2",
    "UserError", "ConfigError", "CheckpointError",
]
