"""tinyvision: image classifiers trained with PyTorch Lightning, composed with Hydra."""

__version__ = "0.1.0"
