"""Lightning's demo modules (`lightning.pytorch.demos`): the boring model and datasets that users'
own test suites import. Lightning's LSTM and Transformer demos (WikiText2 downloads its data) are
not part of ferrotrain: asking for them is an AttributeError naming them."""

from ferrotrain._lazy import lazy_getattr

_LAZY = {"BoringModel": "boring_classes", "BoringDataModule": "boring_classes", "DemoModel": "boring_classes"}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr("ferrotrain.demos", _LAZY, globals())
