"""Computer use through the official SDK's ComputerUse on an Xvfb the test starts.

xev (x11-utils) is the witness: it prints the key and button events its window receives.
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from daytona._sync.computer_use import ComputerUse
from daytona.common.computer_use import ScreenshotOptions, ScreenshotRegion
from daytona.common.errors import DaytonaError
from daytona_toolbox_api_client import ComputerUseApi

from tests.helpers import RunningDaemon, sdk_api_client, start_daemon
from tests.system import requires

pytestmark = requires("Xvfb", "xdotool", "import", "xev")
WIDTH, HEIGHT = 800, 600


def _xvfb() -> tuple[subprocess.Popen[bytes], str]:
    """An Xvfb on a display number it picks itself (-displayfd)."""
    read, write = os.pipe()
    process = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", f"{WIDTH}x{HEIGHT}x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as numbers:
        number = numbers.readline().strip()
    assert number, "Xvfb did not report its display"
    return process, f":{number}"


def _unused_display() -> str:
    for number in range(150, 400):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            return f":{number}"
    raise RuntimeError("no free display number")


class Xev:
    """xev's window at (0,0) 400x300, its event lines collected in a thread."""

    def __init__(self, display: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            ["stdbuf", "-oL", "xev", "-geometry", "400x300+0+0", "-event", "keyboard", "-event", "button"],
            env={**os.environ, "DISPLAY": display}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, fragment: str, timeout: float = 5.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = "".join(self.lines)
            if fragment in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{fragment!r} not in xev output: {''.join(self.lines)[-2000:]}")

    def clear(self) -> None:
        self.lines.clear()

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    process, name = _xvfb()
    yield name
    process.kill()
    process.wait()


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory, display: str) -> Iterator[RunningDaemon]:
    running = start_daemon(tmp_path_factory.mktemp("cu"), extra_env={"DISPLAY": display})
    yield running
    running.stop()


@pytest.fixture
def xev(display: str) -> Iterator[Xev]:
    witness = Xev(display)
    end = time.monotonic() + 5
    while time.monotonic() < end:  # mapped once xdotool can see it
        found = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", "Event Tester"],
                               env={**os.environ, "DISPLAY": display}, capture_output=True)
        if found.stdout.strip():
            break
        time.sleep(0.05)
    yield witness
    witness.close()


def _computer_use(daemon: RunningDaemon, via_prefix: bool = False) -> ComputerUse:
    return ComputerUse(ComputerUseApi(sdk_api_client(daemon, via_prefix=via_prefix)), httpx.Client(timeout=30))


def _decoded(screenshot: str | None) -> bytes:
    assert screenshot is not None, "no image in the reply"
    return base64.b64decode(screenshot)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_status_display_and_screenshots(desktop: RunningDaemon) -> None:
    cu = _computer_use(desktop, via_prefix=True)
    status = cu.start().status
    assert status is not None and status["xvfb"].running is True  # an X server already answers: used as is
    assert cu.get_status().status == "active"
    assert cu.get_process_status("xvfb").running is True
    info = cu.display.get_info()
    assert info.displays is not None
    assert [(d.width, d.height, d.is_active) for d in info.displays] == [(WIDTH, HEIGHT, True)]

    full = cu.screenshot.take_full_screen(show_cursor=True)
    assert _png_size(_decoded(full.screenshot)) == (WIDTH, HEIGHT)
    assert full.size_bytes == len(_decoded(full.screenshot)) and full.cursor_position is not None
    region = cu.screenshot.take_region(ScreenshotRegion(x=10, y=20, width=120, height=80))
    assert _png_size(_decoded(region.screenshot)) == (120, 80)
    jpeg = cu.screenshot.take_compressed(ScreenshotOptions(fmt="jpeg", quality=50, scale=0.5))
    assert _decoded(jpeg.screenshot)[:3] == b"\xff\xd8\xff"
    small = cu.screenshot.take_compressed_region(ScreenshotRegion(x=0, y=0, width=200, height=100), ScreenshotOptions(scale=0.5))
    assert _png_size(_decoded(small.screenshot)) == (100, 50)


def test_mouse_and_keyboard_reach_a_window(desktop: RunningDaemon, xev: Xev) -> None:
    cu = _computer_use(desktop)
    windows = cu.display.get_windows().windows
    assert windows is not None
    tester = next(w for w in windows if w.title == "Event Tester")
    assert (tester.x, tester.y, tester.width, tester.height) == (0, 0, 400, 300)

    moved = cu.mouse.move(150, 120)
    assert (moved.x, moved.y) == (150, 120)
    position = cu.mouse.get_position()
    assert (position.x, position.y) == (150, 120)

    cu.mouse.click(100, 100, button="right")
    xev.wait_for("button 3")
    cu.mouse.scroll(100, 100, "down", 2)
    xev.wait_for("button 5")
    xev.clear()

    cu.keyboard.type("hi")
    text = xev.wait_for("keysym 0x69, i")
    assert "keysym 0x68, h" in text
    cu.keyboard.press("enter")
    xev.wait_for("Return")
    cu.keyboard.hotkey("ctrl+a")
    text = xev.wait_for("keysym 0x61, a")
    assert "Control_L" in text
    cu.keyboard.press("b", ["shift"])
    xev.wait_for("Shift_L")

    dragged = cu.mouse.drag(10, 10, 200, 150)
    assert (dragged.x, dragged.y) == (200, 150)
    xev.wait_for("ButtonRelease")


def test_bad_input_is_4xx(desktop: RunningDaemon) -> None:
    with desktop.client() as http:
        for path, body in (("/computeruse/mouse/click", {"x": 1, "y": 1, "button": "thumb"}),
                           ("/computeruse/mouse/scroll", {"x": 1, "y": 1, "direction": "sideways"}),
                           ("/computeruse/keyboard/key", {"key": "no such key!"}),
                           ("/computeruse/mouse/move", {"x": 1})):
            response = http.post(path, json=body)
            assert response.status_code == 400, (path, response.text)
            assert response.json()["code"] == "BAD_REQUEST"
        region = http.get("/computeruse/screenshot/region", params={"x": 0, "y": 0, "width": 0, "height": 5})
        scale = http.get("/computeruse/screenshot/compressed", params={"scale": "2"})
        unknown = http.get("/computeruse/process/kwin/status")
        a11y = http.get("/computeruse/a11y/tree")
    assert region.status_code == 400 and scale.status_code == 400
    assert unknown.status_code == 404 and unknown.json()["code"] == "PROCESS_NOT_FOUND"
    assert a11y.status_code == 503 and a11y.json()["code"] == "A11Y_UNAVAILABLE"


def test_without_display_then_started_and_stopped_by_the_daemon(tmp_path: Path) -> None:
    display = _unused_display()
    running = start_daemon(tmp_path, extra_env={"DISPLAY": display})
    try:
        cu = _computer_use(running)
        assert cu.get_status().status == "inactive"
        with pytest.raises(DaytonaError) as caught:
            cu.mouse.get_position()
        assert caught.value.status_code == 503 and "/computeruse/start" in str(caught.value)
        if shutil.which("ffmpeg") is None:
            with pytest.raises(DaytonaError) as caught:
                cu.recording.start("demo")
            assert caught.value.code == "RECORDING_FFMPEG_NOT_FOUND"

        started = cu.start().status
        assert started is not None and started["xvfb"].running is True and started["xvfb"].pid
        assert cu.get_status().status == "active"
        displays = cu.display.get_info().displays
        assert displays is not None and (displays[0].width or 0) > 0
        assert cu.get_process_logs("xvfb").process_name == "xvfb"
        cu.stop()
        assert cu.get_status().status == "inactive"
        assert not Path(f"/tmp/.X11-unix/X{display[1:]}").exists()
    finally:
        running.stop()
