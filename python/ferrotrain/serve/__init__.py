"""Lightning's serving contract (`ferrotrain.serve`): a `ServableModule` says how a request is
decoded, run and answered; `ServableModuleValidator` checks that contract when a fit starts."""

from ferrotrain.serve.servable_module import ServableModule
from ferrotrain.serve.validator import ServableModuleValidator

__all__ = ["ServableModule", "ServableModuleValidator"]
