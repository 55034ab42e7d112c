"""Whether a user's class replaces a base-class hook: read by the Trainer, the strategies and the callbacks,
so it sits in the bottom layer. Private: Lightning's public `utilities.model_helpers.is_overridden` takes
`(method_name, instance, parent)`, and a name at Lightning's path must keep Lightning's signature."""

from typing import Any


def is_overridden(obj: Any, base: type, name: str) -> bool:
    """True when `obj`'s class (or the instance itself) replaces `base.name`."""
    inst = getattr(obj, "__dict__", {})
    if name in inst:
        # `model.validation_step = None` switches the hook off, as in Lightning.
        return inst[name] is not None
    impl = getattr(type(obj), name, None)
    default = getattr(base, name, None)
    if impl is None:
        return False
    if default is None:
        return True
    return getattr(impl, "__code__", impl) is not getattr(default, "__code__", default)
