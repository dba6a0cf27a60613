"""The contract between the packages, and the one thing they all import: what a results folder
(``--out``) holds and how it is read and written, and the vocabularies its rows use.

    results.errors    UserError (the project's one error type a user can fix), ConfigError
    results.schema    identity columns and the Parquet schemas of train/, noise/, attacks/, gallery/
    results.layout    where each file lives, the trial id, the attack part file names
    results.records   sweep.json (with the grid's shape, GridConfig) and tracking.json, and the
                      one rule for the tracking URI of a run on an existing folder
    results.store     Store: a local folder or any pyarrow filesystem, atomic writes
    results.kinds     the registry of model kinds (KindSpec): names, L and β rules, the layers a
                      decoder reads and an attack matches, labels and colours
    results.vocabulary  the attack words: the modes, each mode's default similarity, the
                      similarities and each one's unit (a registered similarity carries its unit)

Imports no torch, Ray or MLflow (pyarrow only), so ``analysis`` runs on a laptop without them;
``models``, ``sweep``, ``analysis`` and the synthetic writer all import it.
"""
