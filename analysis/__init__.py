"""Read a sweep's results folder, aggregate with 95% confidence intervals, draw the paper's
figures, write the report and query the MLflow runs.

Runs on a laptop without torch or ray: this package imports only pyarrow, pandas, numpy,
scipy, matplotlib (Agg) and, lazily, mlflow. It never imports ``models``, ``attacks`` or
``sweep``.

Entry points::

    from analysis.report import build_report      # build_report(out_dir, tracking_uri=None, log_to_mlflow=True) -> Path
    from analysis.load import load_train, load_attacks, load_noise, load_gallery
    from analysis.query import query_runs         # python -m analysis.query --where "model='seatbelt' and beta>=4"
"""

from analysis.errors import AnalysisError, AnalysisWarning

__all__ = ["AnalysisError", "AnalysisWarning"]
