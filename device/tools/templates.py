"""The subset of Home Assistant's Jinja templates that device announcements use."""

from __future__ import annotations

import json
import re
from typing import Any

class TemplateError(ValueError):
    """A template outside the small subset of Home Assistant's Jinja that we understand."""


_EXPR_RE = re.compile(r"\{\{(.*?)\}\}", re.S)
_PATH_TOKEN = re.compile(r"\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(?:'([^']*)'|\"([^\"]*)\"|(-?\d+))\s*\])")
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")
_FILTER = re.compile(r"\s*\|\s*([A-Za-z_]+)\s*(?:\(\s*([^)]*?)\s*\))?")
_UNDEFINED = object()


def _jinja_str(v: Any) -> str:
    """How Jinja prints a value (True -> 'True', 21.0 -> '21.0', None -> 'None')."""
    if isinstance(v, str):
        return v
    return str(v)


class Template:
    """The subset of Home Assistant templates that device announcements use.

    ``{{ value }}``, ``{{ value_json.a.b }}``, ``{{ value_json['a'][0] }}`` and command variables
    (``{{ position }}``), each with filters ``int``, ``float``, ``round(n)``, ``string``, ``lower``,
    ``upper``, ``trim``, ``tojson``, ``default(x)``, in any surrounding literal text. Anything else
    (``{% ... %}``, expressions) raises :class:`TemplateError` when the template is built.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        if "{%" in text or "{#" in text:
            raise TemplateError(f"unsupported template (statements): {text!r}")
        self._parts: list[str | tuple[str, list[str | int], list[tuple[str, str | None]]]] = []
        pos = 0
        for m in _EXPR_RE.finditer(text):
            self._parts.append(text[pos : m.start()])
            self._parts.append(self._parse_expr(m.group(1)))
            pos = m.end()
        self._parts.append(text[pos:])
        if "{{" in text[pos:] or "}}" in text[pos:]:
            raise TemplateError(f"unbalanced template: {text!r}")

    @staticmethod
    def _parse_expr(expr: str) -> tuple[str, list[str | int], list[tuple[str, str | None]]]:
        m = _NAME.match(expr)
        if not m:
            raise TemplateError(f"unsupported template expression {expr.strip()!r}")
        name = m.group(1)
        pos = m.end()
        path: list[str | int] = []
        while True:
            t = _PATH_TOKEN.match(expr, pos)
            if not t:
                break
            if t.group(1) is not None:
                path.append(t.group(1))
            elif t.group(4) is not None:
                path.append(int(t.group(4)))
            else:
                path.append(t.group(2) if t.group(2) is not None else t.group(3))
            pos = t.end()
        filters: list[tuple[str, str | None]] = []
        while True:
            f = _FILTER.match(expr, pos)
            if not f:
                break
            if f.group(1) not in ("int", "float", "round", "string", "lower", "upper", "trim", "tojson", "default", "d"):
                raise TemplateError(f"unsupported template filter {f.group(1)!r} in {expr.strip()!r}")
            filters.append((f.group(1), f.group(2)))
            pos = f.end()
        if expr[pos:].strip():
            raise TemplateError(f"unsupported template expression {expr.strip()!r}")
        return name, path, filters

    @staticmethod
    def _literal(arg: str | None) -> Any:
        if arg is None or arg == "":
            return None
        if arg[0] in "'\"" and arg[-1] == arg[0]:
            return arg[1:-1]
        try:
            return json.loads(arg.lower() if arg in ("True", "False") else arg)
        except ValueError:
            return arg

    def _eval(self, name: str, path: list[str | int], filters: list[tuple[str, str | None]], variables: dict[str, Any]) -> Any:
        value = variables.get(name, _UNDEFINED)
        for key in path:
            if isinstance(value, dict) and isinstance(key, str):
                value = value.get(key, _UNDEFINED)
            elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
                value = value[key]
            else:
                value = _UNDEFINED
            if value is _UNDEFINED:
                break
        for fname, arg in filters:
            if fname in ("default", "d"):
                if value is _UNDEFINED:
                    value = self._literal(arg)
                continue
            if value is _UNDEFINED:
                continue
            if fname == "int":
                try:
                    value = int(float(value)) if not isinstance(value, bool) else int(value)
                except (TypeError, ValueError):
                    value = 0
            elif fname == "float":
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    value = 0.0
            elif fname == "round":
                digits = self._literal(arg)
                try:
                    value = round(float(value), int(digits) if digits is not None else 0)
                except (TypeError, ValueError):
                    pass
            elif fname == "string":
                value = _jinja_str(value)
            elif fname == "lower":
                value = _jinja_str(value).lower()
            elif fname == "upper":
                value = _jinja_str(value).upper()
            elif fname == "trim":
                value = _jinja_str(value).strip()
            elif fname == "tojson":
                value = json.dumps(value)
        return value

    def render(self, variables: dict[str, Any]) -> str | None:
        """Render; None when a value the template reads is missing (the message has no such key)."""
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = self._eval(*part, variables)
            if value is _UNDEFINED:
                return None
            out.append(_jinja_str(value))
        return "".join(out)

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
    if not text:
        return None
    try:
        return Template(text)
    except TemplateError as exc:
        raise ValueError(f"{where}: {exc}") from None

