"""The commands: ``grid`` (``python -m sweep.grid``: check, train, attack, report, through
``pipeline``, or ``--plan``'s cost estimate from ``plan``), ``attack`` (``python -m sweep.attack``:
the attack stage of an existing sweep) and the flags and error handling they share (``options``).
The top of the package: it imports every stage, and no stage imports it."""
