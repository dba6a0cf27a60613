"""A model kind from outside the package (tests/test_plugins.py): the β-VAE of Higgins et al.

One stochastic layer, and β weighs the whole KL of z, where β-TCVAE weighs only its total
correlation. The kind's regulariser adds (β − 1)·KL to −ELBO, which holds the KL once already, so
the loss is −recon + β·KL (free bits at 0). A sweep config uses it with ``plugins = ["betavae"]``
and this folder on PYTHONPATH; nothing in the package names it.
"""

from models.kinds import KindSpec, register


def kl_penalty(terms, beta):
    return (beta - 1.0) * terms.kls[-1].mean()


BETAVAE = register(KindSpec(name="betavae", label="β-VAE", colour="#ff7f0e", min_layers=1, max_layers=1,
                            regulariser=kl_penalty))
