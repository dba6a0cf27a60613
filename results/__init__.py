"""The contract between the packages, and the one thing they all import.

    results.errors    UserError (the project's one error type a user can fix), ConfigError
    results.kinds     the registry of model kinds (KindSpec): names, L and β rules, the layers a
                      decoder reads and an attack matches, labels and colours

Imports no torch, Ray or MLflow, so ``analysis`` runs on a laptop without them.
"""
