"""Utilities users import as they do from `lightning.pytorch.utilities`."""

from ferrotrain.utilities.combined_loader import CombinedLoader

__all__ = ["CombinedLoader"]
