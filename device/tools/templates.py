"""Home Assistant's templates, rendered as Home Assistant does: Jinja2 in a sandbox.

Device announcements carry value and command templates: ``{{ value_json.state }}``,
``{ "position": {{ position }} }``, and also statements, as Zigbee2MQTT's covers with a motor
state send (``{% if value_json["running"] %} closing {% else %} stopped {% endif %}``). The
sandbox keeps a template from reaching anything but the values it is given; a value the message
does not have (an undefined variable) makes the template render nothing (None), as the message
then says nothing about that value. Home Assistant's own helpers that announcements use are
provided: ``float``/``int`` with a default, ``bool``, ``iif``, ``is_defined``, ``now()``.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """A template that does not compile (the message names the template and why)."""


def _to_float(v: Any, default: Any = 0.0) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _to_int(v: Any, default: Any = 0, base: int = 10) -> Any:
    try:
        return int(v, base) if isinstance(v, str) and base != 10 else int(float(v))
    except (TypeError, ValueError):
        return default


def _to_bool(v: Any, default: Any = False) -> Any:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("true", "on", "yes", "1", "enable"):
        return True
    if text in ("false", "off", "no", "0", "disable", "none"):
        return False
    return default


def _iif(v: Any, if_true: Any = True, if_false: Any = False, if_none: Any = False) -> Any:
    if v is None:
        return if_none
    return if_true if v else if_false


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters.update(float=_to_float, int=_to_int, bool=_to_bool, iif=_iif,
                       is_defined=lambda v: not isinstance(v, jinja2.Undefined))
    env.globals.update(float=_to_float, int=_to_int, bool=_to_bool, iif=_iif, now=datetime.now)
    env.policies["json.dumps_function"] = json.dumps  # tojson as Python writes it (no HTML escaping)
    env.policies["json.dumps_kwargs"] = {}
    return env


_ENV = _environment()


@lru_cache(maxsize=1024)
def _compile(text: str) -> jinja2.Template:
    # Announcements repeat the same few templates for every device: compile each once.
    try:
        return _ENV.from_string(text)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {text!r} does not compile: {exc}") from None


class Template:
    """One template of an announcement or of the config file."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._template = _compile(text)

    def render(self, variables: dict[str, Any]) -> str | None:
        """Render; None when a value the template reads is missing (the message has no such key)."""
        try:
            return self._template.render(**variables)
        except jinja2.UndefinedError:
            return None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError) as exc:
            raise ValueError(f"template {self.text!r} failed: {type(exc).__name__}: {exc}") from None

    def render_value(self, payload: str) -> str | None:
        """A value template applied to a state message (``value`` and, if JSON, ``value_json``)."""
        variables: dict[str, Any] = {"value": payload}
        if "value_json" in self.text:
            try:
                variables["value_json"] = json.loads(payload)
            except ValueError:
                return None
        return self.render(variables)


def template_or_none(text: str, where: str) -> Template | None:
    """A template from the config file; '' is none; a bad one raises ValueError naming ``where``."""
    if not text:
        return None
    try:
        return Template(text)
    except TemplateError as exc:
        raise ValueError(f"{where}: {exc}") from None


__all__ = ["Template", "TemplateError", "template_or_none"]
