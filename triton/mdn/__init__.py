"""Momentum DeltaNet (MDN): kernels, references, layers, training and the mdnctl runner."""

__version__ = "0.1.0"
