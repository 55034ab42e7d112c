"""Lightning's `lightning.pytorch.utilities.exceptions` names, where its users import them."""

from ferrotrain.errors import MisconfigurationException, SIGTERMException

__all__ = ["MisconfigurationException", "SIGTERMException"]
