"""Colours: names, #rrggbb, CIE xy and hue/saturation, as lights speak them."""

from __future__ import annotations

import colorsys
import math
import re
from typing import Any

COLOR_NAMES: dict[str, str] = {
    "white": "#ffffff", "warm white": "#ffd7a0", "cool white": "#e6f0ff", "red": "#ff0000", "green": "#00ff00",
    "blue": "#0000ff", "yellow": "#ffff00", "orange": "#ff8000", "purple": "#8000ff", "violet": "#8f00ff",
    "pink": "#ff69b4", "magenta": "#ff00ff", "cyan": "#00ffff", "turquoise": "#40e0d0", "teal": "#008080",
    "lime": "#80ff00", "amber": "#ffbf00", "gold": "#ffd700", "lavender": "#b57edc", "indigo": "#4b0082",
    "crimson": "#dc143c", "coral": "#ff7f50", "salmon": "#fa8072",
}
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_color(text: str) -> str | None:
    """'Red', 'warm white', '#FF8000' -> '#ff8000'; None if unknown."""
    t = " ".join(text.strip().casefold().replace("-", " ").replace("_", " ").split())
    if t in COLOR_NAMES:
        return COLOR_NAMES[t]
    if t.replace(" ", "") in COLOR_NAMES:
        return COLOR_NAMES[t.replace(" ", "")]
    m = _HEX.match(t.replace(" ", ""))
    return f"#{m.group(1).lower()}" if m else None


def hex_to_rgb(h: str) -> tuple[int, int, int]:
    h = h.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def rgb_to_hex(r: float, g: float, b: float) -> str:
    return "#" + "".join(f"{max(0, min(255, int(round(v)))):02x}" for v in (r, g, b))


def rgb_to_xy(rgb: tuple[int, int, int]) -> tuple[float, float]:
    """sRGB (0-255) -> CIE xy chromaticity."""

    def lin(c: float) -> float:
        c /= 255.0
        return ((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92

    r, g, b = (lin(v) for v in rgb)
    x = r * 0.4124 + g * 0.3576 + b * 0.1805
    y = r * 0.2126 + g * 0.7152 + b * 0.0722
    z = r * 0.0193 + g * 0.1192 + b * 0.9505
    s = x + y + z
    return (0.3127, 0.329) if s == 0 else (round(x / s, 4), round(y / s, 4))


def xy_to_hex(x: float, y: float) -> str:
    """CIE xy -> the brightest sRGB colour of that chromaticity."""
    if y <= 0:
        return "#ffffff"
    big_y = 1.0
    big_x = big_y / y * x
    big_z = big_y / y * (1 - x - y)
    r = big_x * 3.2406 - big_y * 1.5372 - big_z * 0.4986
    g = -big_x * 0.9689 + big_y * 1.8758 + big_z * 0.0415
    b = big_x * 0.0557 - big_y * 0.2040 + big_z * 1.0570
    r, g, b = (max(0.0, v) for v in (r, g, b))
    m = max(r, g, b) or 1.0
    r, g, b = (v / m for v in (r, g, b))

    def gamma(c: float) -> float:
        return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055

    return rgb_to_hex(*(gamma(v) * 255 for v in (r, g, b)))


def color_from_json(c: Any) -> str | None:
    if not isinstance(c, dict):
        return None
    try:
        if all(k in c for k in ("r", "g", "b")):
            return rgb_to_hex(float(c["r"]), float(c["g"]), float(c["b"]))
        if "x" in c and "y" in c:
            return xy_to_hex(float(c["x"]), float(c["y"]))
        if "h" in c and "s" in c:
            r, g, b = colorsys.hsv_to_rgb(float(c["h"]) / 360.0, float(c["s"]) / 100.0, 1.0)
            return rgb_to_hex(r * 255, g * 255, b * 255)
        if "hue" in c and "saturation" in c:
            r, g, b = colorsys.hsv_to_rgb(float(c["hue"]) / 360.0, float(c["saturation"]) / 100.0, 1.0)
            return rgb_to_hex(r * 255, g * 255, b * 255)
        if isinstance(c.get("hex"), str):
            return parse_color(c["hex"])
    except (TypeError, ValueError):
        return None
    return None


def colors_close(a: str, b: str) -> bool:
    """Same colour within what a bulb's colour space conversion loses (compared as xy chromaticity)."""
    ax, ay = rgb_to_xy(hex_to_rgb(a))
    bx, by = rgb_to_xy(hex_to_rgb(b))
    return math.hypot(ax - bx, ay - by) <= 0.04

