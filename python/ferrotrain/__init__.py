"""ferrotrain: Lightning's Trainer API with a native loop core.

    import ferrotrain as L
    trainer = L.Trainer(max_epochs=3)
    trainer.fit(model, train_loader, val_loader)
"""

from ferrotrain._core import __version__
from ferrotrain.callbacks.callback import Callback
from ferrotrain.core.datamodule import LightningDataModule
from ferrotrain.core.module import LightningModule
from ferrotrain.trainer.trainer import Trainer
from ferrotrain.utilities.seed import seed_everything

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "seed_everything", "__version__"]
