"""rpnet-pl: RPNet (Liu et al.) weakly supervised segmentation in PyTorch Lightning."""

__version__ = "0.1.0"
