"""Every policy a pool can name. Importing this module registers them all in
:data:`~dispatcher.placement.policy.REGISTRY`: a module that adds a policy is imported here,
and nowhere else lists policy names."""

from __future__ import annotations

from dispatcher.placement import nearest, policies
from dispatcher.placement.policy import REGISTRY, Policy


def make_policy(name: str, settings: dict[str, object] | None = None) -> Policy:
    """A new instance of the policy registered as ``name`` (``KeyError`` for an unknown
    name), with ``settings`` as parsed by the configuration (defaults where missing)."""
    cls = REGISTRY[name]
    values = {key: option.default for key, option in cls.options.items()}
    values.update(settings or {})
    return cls(values)


__all__ = ["REGISTRY", "make_policy", "nearest", "policies"]
