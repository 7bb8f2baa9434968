"""Mouse, keyboard, screen and window operations as xdotool / ImageMagick `import` calls."""

from __future__ import annotations

import base64
import re
from typing import Any

from toolbox.computeruse.x11 import X11
from toolbox.errors import DaemonError, bad_request

BUTTONS = {"left": "1", "middle": "2", "right": "3"}
SCROLL_BUTTONS = {"up": "4", "down": "5", "left": "6", "right": "7"}
MODIFIERS = {"ctrl": "ctrl", "control": "ctrl", "alt": "alt", "shift": "shift", "cmd": "super",
             "super": "super", "win": "super", "meta": "meta"}
# Friendly names the SDK documents, mapped to X keysym names.
KEY_ALIASES = {"enter": "Return", "return": "Return", "esc": "Escape", "escape": "Escape",
               "backspace": "BackSpace", "tab": "Tab", "space": "space", "delete": "Delete",
               "del": "Delete", "up": "Up", "down": "Down", "left": "Left", "right": "Right",
               "home": "Home", "end": "End", "pageup": "Prior", "pagedown": "Next",
               "insert": "Insert", "capslock": "Caps_Lock", **MODIFIERS}
_KEY_NAME = re.compile(r"^[A-Za-z0-9_]+$")
MAX_COORD = 100_000


def coordinate(value: int | None, name: str) -> str:
    if value is None:
        raise bad_request(f"{name} is required")
    if not -MAX_COORD <= value <= MAX_COORD:
        raise bad_request(f"{name} must be between {-MAX_COORD} and {MAX_COORD}")
    return str(value)


def button(value: str | None) -> str:
    name = (value or "left").lower()
    if name not in BUTTONS:
        raise bad_request(f"invalid button {value!r}: use left, right or middle")
    return BUTTONS[name]


def keysym(name: str) -> str:
    """One key as xdotool names it: an alias, a keysym name or a single character."""
    if name == "":
        raise bad_request("key must not be empty")
    alias = KEY_ALIASES.get(name.lower())
    if alias:
        return alias
    if len(name) == 1 and name.isprintable():
        return name
    if _KEY_NAME.match(name):
        return name[0].upper() + name[1:] if re.fullmatch(r"[fF]\d{1,2}", name) else name
    raise bad_request(f"invalid key {name!r}: use a key name such as Return, Escape, a, F5")


def modifiers(values: list[str] | None) -> list[str]:
    out = []
    for value in values or []:
        mod = MODIFIERS.get(value.lower())
        if mod is None:
            raise bad_request(f"invalid modifier {value!r}: use ctrl, alt, shift or cmd")
        out.append(mod)
    return out


def combo(keys: str) -> str:
    """`ctrl+shift+t` -> `ctrl+shift+t` in keysym names (a lone `+` is the plus key)."""
    if keys == "" or keys.strip() == "":
        raise bad_request("keys must not be empty, e.g. ctrl+c")
    parts = ["plus" if keys == "+" else p for p in ([keys] if keys == "+" else keys.split("+"))]
    return "+".join(keysym(p) for p in parts)


def with_modifiers(mods: list[str], command: list[str]) -> list[str]:
    if not mods:
        return command
    return ["keydown", "--", "+".join(mods), *command, "keyup", "--", "+".join(mods)]


async def mouse_position(x11: X11) -> dict[str, int]:
    out = (await x11.run("xdotool", "getmouselocation", "--shell")).decode()
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {"x": int(values.get("X", 0)), "y": int(values.get("Y", 0))}


async def display_size(x11: X11) -> tuple[int, int]:
    width, height = (await x11.run("xdotool", "getdisplaygeometry")).split()
    return int(width), int(height)


async def windows(x11: X11, limit: int = 200) -> list[dict[str, Any]]:
    root = (await x11.run("xdotool", "search", "--maxdepth", "0", "--name", "")).split()
    try:
        found = (await x11.run("xdotool", "search", "--onlyvisible", "--maxdepth", "1", "--name", "")).split()
    except DaemonError:  # xdotool exits 1 when nothing matches
        found = []
    try:
        focused = int((await x11.run("xdotool", "getwindowfocus", "-f")).strip() or 0)
    except (DaemonError, ValueError):  # no focus without a window manager
        focused = 0
    out = []
    for window in [w.decode() for w in found if w not in root][:limit]:
        try:
            geometry = (await x11.run("xdotool", "getwindowgeometry", "--shell", window)).decode()
            title = (await x11.run("xdotool", "getwindowname", window)).decode("utf-8", "replace").strip()
        except DaemonError:  # the window closed meanwhile
            continue
        values = dict(line.split("=", 1) for line in geometry.splitlines() if "=" in line)
        out.append({
            "id": int(window), "title": title,
            "x": int(values.get("X", 0)), "y": int(values.get("Y", 0)),
            "width": int(values.get("WIDTH", 0)), "height": int(values.get("HEIGHT", 0)),
            "isActive": int(window) == focused,
        })
    return out


async def screenshot(
    x11: X11,
    *,
    region: tuple[int, int, int, int] | None = None,
    fmt: str = "png",
    quality: int | None = None,
    scale: float | None = None,
    show_cursor: bool = False,
) -> dict[str, Any]:
    args = ["-silent", "-window", "root"]
    if region is not None:
        x, y, width, height = region
        args += ["-crop", f"{width}x{height}+{x}+{y}", "+repage"]
    if scale is not None and scale != 1.0:
        args += ["-resize", f"{scale * 100:.2f}%"]
    if quality is not None:
        args += ["-quality", str(quality)]
    image = await x11.run("import", *args, f"{fmt}:-")
    if not image:
        raise bad_request("the region lies outside the screen")
    result: dict[str, Any] = {"screenshot": base64.b64encode(image).decode("ascii"), "sizeBytes": len(image)}
    if show_cursor:
        # Reported, not drawn: ImageMagick's `import` cannot draw, and the SDK only reads it.
        result["cursorPosition"] = await mouse_position(x11)
    return result
