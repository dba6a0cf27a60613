"""What every stage runs on: Ray (``cluster``), the results-folder lock (``lock``), MLflow
(``tracking``, and ``run_artifacts``: a run's model file and reconstructions) and the progress
lines of a long stage (``progress``)."""
