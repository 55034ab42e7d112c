"""`LightningDataModule`: the data side of an experiment (download, split, loaders, transfer
hooks), as in Lightning 2.x. The Trainer calls its hooks; it runs nothing itself."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional

from ferrotrain.core.hparams import HyperparametersMixin
from ferrotrain.core.module import _DataHooks


class LightningDataModule(HyperparametersMixin, _DataHooks):
    name: Optional[str] = None

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Any = None
        self.prepare_data_per_node = True

    def __str__(self) -> str:
        from ferrotrain.core.datamodule_summary import describe_datamodule

        return describe_datamodule(self)

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None: ...

    def on_exception(self, exception: BaseException) -> None: ...

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Any = None,
        val_dataset: Any = None,
        test_dataset: Any = None,
        predict_dataset: Any = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> "LightningDataModule":
        from torch.utils.data import DataLoader

        def loaders(ds: Any, shuffle: bool) -> Any:
            if isinstance(ds, dict):
                return {k: DataLoader(v, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers) for k, v in ds.items()}
            if isinstance(ds, (list, tuple)):
                return [DataLoader(v, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers) for v in ds]
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)

        # `batch_size`/`num_workers` also go to `__init__` when it takes them (by name or **kwargs).
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        special = {"batch_size": batch_size, "num_workers": num_workers}
        init_kwargs = {k: v for k, v in special.items() if takes_any or k in params}
        dm = cls(**init_kwargs, **datamodule_kwargs)
        if train_dataset is not None:
            dm.train_dataloader = lambda: loaders(train_dataset, True)  # type: ignore[method-assign]
        if val_dataset is not None:
            dm.val_dataloader = lambda: loaders(val_dataset, False)  # type: ignore[method-assign]
        if test_dataset is not None:
            dm.test_dataloader = lambda: loaders(test_dataset, False)  # type: ignore[method-assign]
        if predict_dataset is not None:
            dm.predict_dataloader = lambda: loaders(predict_dataset, False)  # type: ignore[method-assign]
        return dm
