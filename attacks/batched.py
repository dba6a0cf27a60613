"""Moved to the package ``attacks.lbfgsb`` (the batched L-BFGS-B solver); kept for old imports."""

from attacks.lbfgsb import *  # noqa: F401,F403
from attacks.lbfgsb import BatchedLBFGSB, bytes_per_problem, probe_cpu_chunk, problems_per_chunk  # noqa: F401
from attacks.lbfgsb.driver import _history  # noqa: F401
