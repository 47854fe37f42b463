"""latent_flow: flow matching in the latent space of pretrained autoencoders.

Time convention everywhere: ``t = 0`` is noise, ``t = 1`` is data.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
