"""The home as Home Assistant models it: devices that own entities, names by its rules, lookup.

An entity (:class:`~device.tools.devices.Device`, one controllable or readable thing) belongs to a
device (:class:`DeviceInfo`, from the discovery ``device`` block: identifiers, name, model,
manufacturer, suggested_area, via_device). Entity names follow Home Assistant's
``has_entity_name`` rules: an entity without a name of its own *is* the device and is called by the
device's name; a named one is "<device name> <entity name>". The device information is merged
from every entity of the device, as Home Assistant's device registry does (Tasmota, for one, sends
the device's name with only one of its entities).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from device.tools.devices import Device, DeviceSpec

_LOG = logging.getLogger(__name__)


def normalize_name(name: str) -> str:
    """Case- and space-insensitive form of a spoken name."""
    return " ".join(name.casefold().replace("_", " ").split())


def compose_name(device_name: str, entity_name: str | None, fallback: str) -> str:
    """Home Assistant's friendly name of an entity of a device (``has_entity_name``)."""
    dn = device_name.strip()
    if entity_name is None:
        return dn or fallback
    en = entity_name.strip()
    if not dn:
        return en or fallback
    if not en or en.casefold() == dn.casefold():
        return dn
    if en.casefold().startswith(dn.casefold() + " "):
        return en  # an old-style name that already starts with the device's name
    return f"{dn} {en}"


@dataclass
class DeviceInfo:
    """One physical (or logical) device and what it announced about itself."""

    id: str
    name: str = ""
    area: str = ""
    model: str = ""
    manufacturer: str = ""
    via_device: str = ""

    def merge(self, spec: DeviceSpec) -> bool:
        """Take what this entity's announcement says about the device; True if anything changed."""
        before = (self.name, self.area, self.model, self.manufacturer, self.via_device)
        self.name = spec.device_name or self.name
        self.area = spec.area or self.area
        self.model = spec.model or self.model
        self.manufacturer = spec.manufacturer or self.manufacturer
        self.via_device = spec.via_device or self.via_device
        return before != (self.name, self.area, self.model, self.manufacturer, self.via_device)


@dataclass
class Lookup:
    """What a spoken name resolved to: one entity, or a device with nothing to control, or nothing."""

    device: Device | None
    suggestions: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)  # several equally good matches: ask which
    group: DeviceInfo | None = None  # a device addressed by name that has only readings


# Words people use for a kind of device ("the blinds", "the thermostat in the hall").
TYPE_WORDS: dict[str, frozenset[str]] = {
    "light": frozenset({"light", "lamp", "bulb", "lighting"}),
    "switch": frozenset({"switch", "plug", "socket", "outlet", "relay"}),
    "cover": frozenset({"blind", "shade", "curtain", "shutter", "cover", "awning", "window"}),
    "garage_door": frozenset({"garage", "door", "gate"}),
    "lock": frozenset({"lock", "door"}),
    "climate": frozenset({"thermostat", "heating", "heater", "radiator", "trv", "climate", "valve", "ac"}),
    "fan": frozenset({"fan"}),
    "scene": frozenset({"scene"}),
    "button": frozenset({"button"}),
    "alarm": frozenset({"alarm", "security"}),
    "sensor": frozenset({"sensor"}),
    "binary_sensor": frozenset({"sensor"}),
}
_FILLER = frozenset({"the", "a", "an", "in", "on", "at", "of", "my", "our", "from", "to", "please", "for", "by"})


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def tokens(text: str) -> frozenset[str]:
    """The words of a name that matter for matching (fillers dropped, plurals folded)."""
    return frozenset(_stem(w) for w in normalize_name(text).replace("'s", "").split() if w not in _FILLER)


class DeviceRegistry:
    """Entities by key, grouped into devices; allow/deny lists decide which the model sees."""

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self._by_key: dict[str, Device] = {}
        self._announced: dict[str, DeviceSpec] = {}  # each entity's spec as announced (before naming)
        self._infos: dict[str, DeviceInfo] = {}
        self._names: dict[str, str] = {}  # normalized name -> entity key
        self._name_of: dict[str, str] = {}  # entity key -> its normalized name
        self._allow = [normalize_name(p) for p in allow]
        self._deny = [normalize_name(p) for p in deny]
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, cb: Callable[[], None]) -> None:
        self._listeners.append(cb)

    def _changed(self) -> None:
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:
                _LOG.exception("device registry listener failed")

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> Device | None:
        return self._by_key.get(key)

    def all(self) -> list[Device]:
        return list(self._by_key.values())

    def info(self, dev: Device) -> DeviceInfo:
        """The device an entity belongs to."""
        return self._infos.get(dev.spec.device_id) or DeviceInfo(dev.spec.device_id or dev.spec.key, dev.spec.device_name,
                                                                   dev.spec.area)

    def is_main(self, dev: Device) -> bool:
        """Whether the entity is the device itself (no name of its own, or its device's name)."""
        en = dev.spec.entity_name
        if en is None or not en.strip():
            return True
        return normalize_name(en) == normalize_name(self.info(dev).name)

    # ------------------------------------------------------------------ adding and removing
    def _name_taken(self, name: str, key: str) -> bool:
        holder = self._names.get(normalize_name(name))
        return holder is not None and holder != key

    def _index(self, dev: Device | None, key: str) -> None:
        """Keep the name -> key index in step with an entity's (new) name."""
        old = self._name_of.pop(key, None)
        if old is not None and self._names.get(old) == key:
            del self._names[old]
        if dev is not None:
            n = self._name_of[key] = normalize_name(dev.name)
            self._names[n] = key

    def _named(self, spec: DeviceSpec) -> tuple[DeviceSpec, str]:
        """The spec with Home Assistant's name, made unique; and the name before that."""
        info = self._infos.get(spec.device_id)
        device_name = info.name if info is not None else spec.device_name
        area = info.area if info is not None and info.area else spec.area
        given = name = compose_name(device_name, spec.entity_name, spec.name)
        if self._name_taken(name, spec.key):
            if area and not self._name_taken(f"{area} {name}", spec.key):
                name = f"{area} {name}"
            else:
                i = 2
                while self._name_taken(f"{name} {i}", spec.key):
                    i += 1
                name = f"{name} {i}"
            _LOG.info("device name %r is taken; calling the device from %s %r", given, spec.source, name)
        return replace(spec, name=name, area=area, device_name=device_name), given

    def put(self, spec: DeviceSpec) -> Device:
        """Add an entity or update one with the same key; a clashing name gets the area or a number."""
        renamed_device = False
        if spec.device_id:
            info = self._infos.setdefault(spec.device_id, DeviceInfo(spec.device_id))
            renamed_device = info.merge(spec)
        self._announced[spec.key] = spec
        named, given = self._named(spec)
        dev = self._by_key.get(spec.key)
        if dev is None:
            dev = self._by_key[spec.key] = Device(named)
        else:
            dev.replace_spec(named)
        dev.given_name = given
        self._index(dev, spec.key)
        if renamed_device:  # the device's name or area arrived or changed: its other entities follow
            for other in list(self._by_key.values()):
                if other is not dev and other.spec.device_id == spec.device_id:
                    again, other_given = self._named(self._announced.get(other.spec.key, other.spec))
                    other.replace_spec(again)
                    other.given_name = other_given
                    self._index(other, other.spec.key)
        self._changed()
        return dev

    def remove(self, key: str) -> Device | None:
        dev = self._by_key.pop(key, None)
        self._announced.pop(key, None)
        if dev is not None:
            self._index(None, key)
            did = dev.spec.device_id
            if did and not any(d.spec.device_id == did for d in self._by_key.values()):
                self._infos.pop(did, None)  # its last entity went: the device is gone too
            self._changed()
        return dev

    # ------------------------------------------------------------------ what the model sees
    def exposed(self, dev: Device) -> bool:
        """Whether the model may see and control this entity (allow/deny lists, shell-style patterns).

        A pattern matches the entity's name or its device's: denying "front door" hides the lock
        and its battery, allowing it shows both."""
        device_name = normalize_name(self.info(dev).name)
        names = {normalize_name(dev.name), normalize_name(dev.given_name), device_name} - {""}
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in self._deny):
            return False
        return not self._allow or any(fnmatch.fnmatchcase(n, p) for n in (normalize_name(dev.name), device_name) if n
                                      for p in self._allow)

    def visible(self) -> list[Device]:
        """Exposed entities sorted by area and name."""
        return sorted((d for d in self._by_key.values() if self.exposed(d)), key=lambda d: (d.spec.area.casefold(), d.name.casefold()))

    def names(self) -> list[str]:
        return sorted((d.name for d in self.visible()), key=str.casefold)

    def command_topics(self) -> frozenset[str]:
        """Every command topic of every exposed entity: the only topics a tool may publish to."""
        return frozenset(t for d in self.visible() for t in d.spec.command_topics())

    def devices(self) -> list[tuple[DeviceInfo, list[Device]]]:
        """Visible entities grouped by device, devices sorted by area and name, main entity first."""
        groups: dict[str, list[Device]] = {}
        for d in self.visible():
            groups.setdefault(d.spec.device_id or d.spec.key, []).append(d)
        out: list[tuple[DeviceInfo, list[Device]]] = []
        for did, ents in groups.items():
            info = self._infos.get(did) or DeviceInfo(did, ents[0].spec.device_name or ents[0].name, ents[0].spec.area)
            ents.sort(key=lambda e: (not (self.is_main(e) and e.spec.controllable), not e.spec.controllable,
                                     not self.is_main(e), e.name.casefold()))
            out.append((info, ents))
        out.sort(key=lambda g: (g[0].area.casefold(), (g[0].name or g[1][0].name).casefold()))
        return out

    def primary(self, ents: list[Device]) -> Device | None:
        """The entity a device's name stands for: its controllable main entity (never a reading)."""
        controllable = [e for e in ents if e.spec.controllable]
        mains = [e for e in controllable if self.is_main(e)]
        if mains:
            return mains[0]
        if len(controllable) == 1:
            return controllable[0]
        if not controllable:  # a sensor that is the device itself (a configured sensor, name: null)
            return next((e for e in ents if self.is_main(e)), None)
        return None

    # ------------------------------------------------------------------ lookup
    def find(self, name: str) -> Lookup:
        """What a person called a device -> the entity they mean.

        Exact entity names first, then a device's name (its controllable main entity), then the
        words of the name against device, entity, area and kind ("the blinds in the living room").
        Several equally good matches give ``candidates``, never a guess.
        """
        visible = self.visible()
        groups = self.devices()
        n = normalize_name(name)
        for variant in (n, n.removeprefix("the ")):
            named = [(info, ents) for info, ents in groups if info.name and (
                normalize_name(info.name) == variant
                or (info.area and normalize_name(f"{info.area} {info.name}") == variant))]
            if len(named) > 1:  # two devices of that name (a Zigbee and a Wi-Fi one): ask which
                return Lookup(None, candidates=sorted(((self.primary(e) or e[0]).name for _, e in named), key=str.casefold))
            for d in visible:
                if normalize_name(d.name) == variant:
                    return Lookup(d)
            if named:
                info, ents = named[0]
                main = self.primary(ents)
                return Lookup(main) if main is not None else Lookup(None, group=info)
            # "kitchen ceiling light" for an entity "ceiling light" in the area "kitchen"
            hits = [d for d in visible if d.spec.area and normalize_name(f"{d.spec.area} {d.name}") == variant]
            if len(hits) == 1:
                return Lookup(hits[0])
        found = self._match_words(name, groups)
        if found is not None:
            return found
        names = {normalize_name(d.name): d.name for d in visible}
        close = difflib.get_close_matches(n, list(names), n=3, cutoff=0.5)
        if not close:
            close = [k for k in names if n and (n in k or k in n)][:3]
        return Lookup(None, [names[c] for c in close])

    def _match_words(self, name: str, groups: list[tuple[DeviceInfo, list[Device]]]) -> Lookup | None:
        q = tokens(name)
        if not q:
            return None
        scored: list[tuple[tuple[float, int], Device]] = []
        for info, ents in groups:
            dev_words = tokens(info.name or ents[0].name)
            area_words = tokens(info.area)
            primary = self.primary(ents)
            for e in ents:
                own = frozenset() if self.is_main(e) else tokens(e.spec.entity_name or "") - dev_words
                kind = TYPE_WORDS.get(e.spec.type, frozenset())
                if not q <= dev_words | area_words | own | kind:
                    continue
                if own and own <= q:
                    tier = 3.0  # the person named this entity's own part ("battery", "power")
                elif e is primary and q & (dev_words | kind):
                    tier = 2.0  # the device, by its name or its kind: its main entity, never a reading
                elif q & own:
                    tier = 1.0  # part of an entity's own name ("valve" for "Valve position")
                else:
                    continue
                scored.append(((tier, len(q & (dev_words | own))), e))
        if not scored:
            return None
        scored.sort(key=lambda s: s[0], reverse=True)
        best = [e for score, e in scored if score == scored[0][0]]
        if len(best) == 1:
            return Lookup(best[0])
        return Lookup(None, candidates=sorted((e.name for e in best), key=str.casefold))


__all__ = ["DeviceInfo", "DeviceRegistry", "Lookup", "TYPE_WORDS", "compose_name", "normalize_name", "tokens"]
