"""testbed: hand-written backprop, checked against PyTorch."""

__version__ = "0.1.0"
