"""The platform table: one module per kind of entity (see :mod:`.base` for what each provides).

Adding a platform is one new module here and one line in ``PLATFORMS``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from device.tools.platforms import alarm, climate, cover, fan, light, lock, scene, sensor, switch

PLATFORMS: tuple[ModuleType, ...] = (light, switch, fan, cover, lock, climate, scene, alarm, sensor)

BY_KIND: dict[str, ModuleType] = {kind: p for p in PLATFORMS for kind in p.KINDS}
BY_COMPONENT: dict[str, ModuleType] = {c: p for p in PLATFORMS for c in p.COMPONENTS}
KINDS: tuple[str, ...] = tuple(BY_KIND)
COMPONENTS: tuple[str, ...] = tuple(BY_COMPONENT)


def platform(kind: str) -> ModuleType:
    """The module of an entity type ("light", "garage_door", ...); KeyError for an unknown one."""
    return BY_KIND[kind]


def kind_of(component: str, cfg: dict[str, Any]) -> str:
    """The entity type a discovery component becomes ("cover" with device class garage -> "garage_door")."""
    p = BY_COMPONENT[component]
    kind_for = getattr(p, "kind_for", None)
    dc = cfg.get("device_class")
    if kind_for is not None:
        return str(kind_for(dc if isinstance(dc, str) else ""))
    return component if component in p.KINDS else p.KINDS[0]


__all__ = ["BY_COMPONENT", "BY_KIND", "COMPONENTS", "KINDS", "PLATFORMS", "kind_of", "platform"]
