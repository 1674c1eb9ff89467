"""dsmpnn: sampling-based distributed message-passing neural networks for PDE surrogates on large meshes."""

__version__ = "0.1.0"
