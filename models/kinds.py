"""The model kinds, as ``models`` sees them: ``get(name)``, ``register(spec)``, ``names()``.

The registry and ``KindSpec`` live in the torch-free contract (``results.kinds``), so that
``analysis`` reads a kind's label and colour without importing torch; this module is the
name models' users import. Adding a kind::

    from models.kinds import KindSpec, register
    register(KindSpec(name="betavae", label="β-VAE", max_layers=1, regulariser=kl_penalty))
"""

from results.kinds import BUILT_IN, KindSpec, all_layers, first_layer, get, names, register, tc_penalty

__all__ = ["KindSpec", "get", "register", "names", "BUILT_IN", "first_layer", "all_layers", "tc_penalty"]
