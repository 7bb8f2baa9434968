"""HTTP layer of computer use (toolbox-api.md §15.1) on an X display (docs/extras.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from toolbox.computeruse import actions
from toolbox.computeruse.recording_routes import build_recording_routes
from toolbox.computeruse.x11 import X11
from toolbox.context import Daemon
from toolbox.errors import Code, DaemonError, bad_request
from toolbox.http import WireModel, json_response, parse_body, path_param, query_bool, query_int, query_str
from toolbox.openapi.registry import operation

UNAVAILABLE = {503: "no X display (POST /computeruse/start), or xdotool/ImageMagick missing"}
PROCESSES = ("xvfb", "xfce4", "x11vnc", "novnc")  # Daytona's names; only Xvfb is provided here


class Position(WireModel):
    x: int
    y: int


class MouseMoveRequest(WireModel):
    x: int | None = None
    y: int | None = None


class MouseClickRequest(WireModel):
    x: int | None = None
    y: int | None = None
    button: str | None = Field(default=None, description="left, right, middle")
    double: bool | None = None
    clicks: int | None = Field(default=None, description="omitted: 1 (2 with double); 0 is rejected")
    modifiers: list[str] | None = None


class MouseDragRequest(WireModel):
    start_x: int | None = Field(default=None, alias="startX")
    start_y: int | None = Field(default=None, alias="startY")
    end_x: int | None = Field(default=None, alias="endX")
    end_y: int | None = Field(default=None, alias="endY")
    button: str | None = None
    modifiers: list[str] | None = None


class MouseScrollRequest(WireModel):
    x: int | None = None
    y: int | None = None
    direction: str | None = Field(default=None, description="up, down, left, right")
    amount: int | None = Field(default=None, description=">= 0")
    modifiers: list[str] | None = None


class MouseButtonRequest(WireModel):
    x: int | None = None
    y: int | None = None
    button: str | None = None


class ScrollResponse(WireModel):
    success: bool


class KeyboardTypeRequest(WireModel):
    text: str | None = None
    delay: int | None = Field(default=None, description="milliseconds between keystrokes")


class KeyboardPressRequest(WireModel):
    key: str | None = None
    modifiers: list[str] | None = None


class KeyboardHotkeyRequest(WireModel):
    keys: str | None = Field(default=None, description='e.g. "ctrl+c"')


class KeyRequest(WireModel):
    key: str


class ScreenshotResponse(WireModel):
    screenshot: str = Field(description="base64 image")
    size_bytes: int = Field(alias="sizeBytes")
    cursor_position: Position | None = Field(default=None, alias="cursorPosition")


class ScreenshotQuery(WireModel):
    show_cursor: bool = Field(default=False, alias="showCursor")


class RegionQuery(ScreenshotQuery):
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class CompressedQuery(ScreenshotQuery):
    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(default=100, ge=0, le=100)
    scale: float = Field(default=1.0, ge=0.1, le=1.0)


class CompressedRegionQuery(RegionQuery, CompressedQuery):
    pass


class DisplayInfo(WireModel):
    id: int
    x: int
    y: int
    width: int
    height: int
    is_active: bool = Field(alias="isActive")


class DisplayInfoResponse(WireModel):
    displays: list[DisplayInfo]


class WindowInfo(DisplayInfo):
    title: str


class WindowsResponse(WireModel):
    windows: list[WindowInfo]


class ProcessStatus(WireModel):
    running: bool
    priority: int
    auto_restart: bool = Field(alias="autoRestart")
    pid: int | None = None


class StartStopResponse(WireModel):
    message: str
    status: dict[str, ProcessStatus]


class StatusResponse(WireModel):
    status: Literal["active", "partial", "inactive", "error"]


class ProcessStatusResponse(WireModel):
    process_name: str = Field(alias="processName")
    running: bool


class ProcessRestartResponse(WireModel):
    message: str
    process_name: str = Field(alias="processName")


class ProcessLogsResponse(WireModel):
    process_name: str = Field(alias="processName")
    logs: str


class ProcessErrorsResponse(WireModel):
    process_name: str = Field(alias="processName")
    errors: str


def _screenshot_query(request: Request, *, region: bool, compressed: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"show_cursor": query_bool(request, "showCursor")}
    if region:
        options["region"] = (
            query_int(request, "x", minimum=0, maximum=actions.MAX_COORD),
            query_int(request, "y", minimum=0, maximum=actions.MAX_COORD),
            query_int(request, "width", minimum=1, maximum=actions.MAX_COORD),
            query_int(request, "height", minimum=1, maximum=actions.MAX_COORD),
        )
        if None in options["region"]:
            raise bad_request("x, y, width and height are required query parameters")
    if compressed:
        fmt = (query_str(request, "format") or "png").lower()
        if fmt not in ("png", "jpeg", "jpg", "webp"):
            raise bad_request(f"invalid format {fmt!r}: use png, jpeg or webp")
        options["fmt"] = "jpeg" if fmt == "jpg" else fmt
        options["quality"] = query_int(request, "quality", 100, minimum=0, maximum=100)
        raw_scale = query_str(request, "scale")
        try:
            scale = float(raw_scale) if raw_scale not in (None, "") else 1.0
        except ValueError:
            raise bad_request(f"scale must be a number between 0.1 and 1.0, got {raw_scale!r}") from None
        if not 0.1 <= scale <= 1.0:
            raise bad_request("scale must be between 0.1 and 1.0")
        options["scale"] = scale
    return options


def build(daemon: Daemon) -> list[BaseRoute]:
    x11 = X11()
    daemon.on_shutdown(x11.stop)

    async def overall_status() -> str:
        return "active" if await x11.reachable() else "inactive"

    # --- process management ------------------------------------------------------------

    @operation(summary="Start Xvfb on $DISPLAY unless an X server already answers there",
               response=StartStopResponse, errors={503: "Xvfb missing or failed to start"})
    async def start(request: Request) -> JSONResponse:
        await x11.start()
        return json_response({"message": "Computer use processes started successfully", "status": await x11.status()})

    @operation(summary="Stop the Xvfb this daemon started", response=StartStopResponse)
    async def stop(request: Request) -> JSONResponse:
        await x11.stop()
        return json_response({"message": "Computer use processes stopped successfully", "status": await x11.status()})

    @operation(summary="active when the display answers, else inactive", response=StatusResponse)
    async def status(request: Request) -> JSONResponse:
        return json_response({"status": await overall_status()})

    def process_name(request: Request) -> str:
        name = path_param(request, "processName")
        if name not in PROCESSES:
            raise DaemonError(Code.PROCESS_NOT_FOUND, f"process {name!r} not found: known processes are {', '.join(PROCESSES)}")
        return name

    @operation(summary="Whether one process runs", response=ProcessStatusResponse, errors={404: "unknown process"})
    async def process_status(request: Request) -> JSONResponse:
        name = process_name(request)
        running = bool((await x11.status())["xvfb"]["running"]) if name == "xvfb" else False
        return json_response({"processName": name, "running": running})

    @operation(summary="Restart Xvfb", response=ProcessRestartResponse,
               errors={400: "the process is not provided by this daemon", 404: "unknown process", **UNAVAILABLE})
    async def process_restart(request: Request) -> JSONResponse:
        name = process_name(request)
        if name != "xvfb":
            raise bad_request(f"{name} is not provided by this daemon; only xvfb can be restarted")
        await x11.restart()
        return json_response({"message": f"Process {name} restarted successfully", "processName": name})

    @operation(summary="Output of a process (bounded tail)", response=ProcessLogsResponse, errors={404: "unknown process"})
    async def process_logs(request: Request) -> JSONResponse:
        name = process_name(request)
        logs = "\n".join(x11.xvfb.output) if name == "xvfb" else ""
        return json_response({"processName": name, "logs": logs})

    @operation(summary="Error lines of a process", response=ProcessErrorsResponse, errors={404: "unknown process"})
    async def process_errors(request: Request) -> JSONResponse:
        name = process_name(request)
        lines = [line for line in x11.xvfb.output if "error" in line.lower()] if name == "xvfb" else []
        return json_response({"processName": name, "errors": "\n".join(lines)})

    # --- mouse -------------------------------------------------------------------------

    @operation(summary="Pointer position", response=Position, errors=UNAVAILABLE)
    async def mouse_position(request: Request) -> JSONResponse:
        return json_response(await actions.mouse_position(x11))

    @operation(summary="Move the pointer", request=MouseMoveRequest, response=Position, errors=UNAVAILABLE)
    async def mouse_move(request: Request) -> JSONResponse:
        body = await parse_body(request, MouseMoveRequest)
        await x11.run("xdotool", "mousemove", actions.coordinate(body.x, "x"), actions.coordinate(body.y, "y"))
        return json_response(await actions.mouse_position(x11))

    @operation(summary="Click at a position", request=MouseClickRequest, response=Position, errors=UNAVAILABLE)
    async def mouse_click(request: Request) -> JSONResponse:
        body = await parse_body(request, MouseClickRequest)
        if body.clicks is not None and not 1 <= body.clicks <= 10:
            raise bad_request("clicks must be between 1 and 10")
        clicks = body.clicks or (2 if body.double else 1)
        command = ["mousemove", actions.coordinate(body.x, "x"), actions.coordinate(body.y, "y"),
                   "click", "--repeat", str(clicks), "--delay", "80", actions.button(body.button)]
        await x11.run("xdotool", *actions.with_modifiers(actions.modifiers(body.modifiers), command))
        return json_response(await actions.mouse_position(x11))

    @operation(summary="Drag from one position to another", request=MouseDragRequest, response=Position, errors=UNAVAILABLE)
    async def mouse_drag(request: Request) -> JSONResponse:
        body = await parse_body(request, MouseDragRequest)
        pressed = actions.button(body.button)
        command = ["mousemove", actions.coordinate(body.start_x, "startX"), actions.coordinate(body.start_y, "startY"),
                   "mousedown", pressed, "sleep", "0.05",
                   "mousemove", actions.coordinate(body.end_x, "endX"), actions.coordinate(body.end_y, "endY"),
                   "sleep", "0.05", "mouseup", pressed]
        await x11.run("xdotool", *actions.with_modifiers(actions.modifiers(body.modifiers), command))
        return json_response(await actions.mouse_position(x11))

    @operation(summary="Scroll at a position", request=MouseScrollRequest, response=ScrollResponse, errors=UNAVAILABLE)
    async def mouse_scroll(request: Request) -> JSONResponse:
        body = await parse_body(request, MouseScrollRequest)
        direction = (body.direction or "").lower()
        if direction not in actions.SCROLL_BUTTONS:
            raise bad_request(f"invalid direction {body.direction!r}: use up, down, left or right")
        amount = 1 if body.amount is None else body.amount
        if not 0 <= amount <= 100:
            raise bad_request("amount must be between 0 and 100")
        command = ["mousemove", actions.coordinate(body.x, "x"), actions.coordinate(body.y, "y")]
        if amount:
            command += ["click", "--repeat", str(amount), "--delay", "20", actions.SCROLL_BUTTONS[direction]]
        await x11.run("xdotool", *actions.with_modifiers(actions.modifiers(body.modifiers), command))
        return json_response({"success": True})

    def button_route(verb: str) -> Any:
        @operation(summary=f"Press or release a mouse button ({verb})", request=MouseButtonRequest,
                   response=Position, errors=UNAVAILABLE)
        async def handler(request: Request) -> JSONResponse:
            body = await parse_body(request, MouseButtonRequest, optional=True)
            command = []
            if body.x is not None or body.y is not None:
                command += ["mousemove", actions.coordinate(body.x, "x"), actions.coordinate(body.y, "y")]
            await x11.run("xdotool", *command, verb, actions.button(body.button))
            return json_response(await actions.mouse_position(x11))

        return handler

    # --- keyboard ----------------------------------------------------------------------

    @operation(summary="Type text", request=KeyboardTypeRequest, response={"type": "object"}, errors=UNAVAILABLE)
    async def keyboard_type(request: Request) -> JSONResponse:
        body = await parse_body(request, KeyboardTypeRequest)
        if body.text is None:
            raise bad_request("text is required")
        delay = 12 if body.delay is None else body.delay
        if not 0 <= delay <= 1000:
            raise bad_request("delay must be between 0 and 1000 ms")
        if len(body.text) > 10_000:
            raise bad_request("text longer than 10000 characters: type it in parts")
        if body.text:
            await x11.run("xdotool", "type", "--delay", str(delay), "--", body.text)
        return json_response({})

    @operation(summary="Press a key with modifiers", request=KeyboardPressRequest, response={"type": "object"}, errors=UNAVAILABLE)
    async def keyboard_key(request: Request) -> JSONResponse:
        body = await parse_body(request, KeyboardPressRequest)
        key = actions.keysym(body.key or "")
        await x11.run("xdotool", "key", "--", "+".join([*actions.modifiers(body.modifiers), key]))
        return json_response({})

    @operation(summary="Press a key combination such as ctrl+c", request=KeyboardHotkeyRequest,
               response={"type": "object"}, errors=UNAVAILABLE)
    async def keyboard_hotkey(request: Request) -> JSONResponse:
        body = await parse_body(request, KeyboardHotkeyRequest)
        await x11.run("xdotool", "key", "--", actions.combo(body.keys or ""))
        return json_response({})

    def key_route(verb: str) -> Any:
        @operation(summary=f"Hold or release a key ({verb})", request=KeyRequest, response={"type": "object"}, errors=UNAVAILABLE)
        async def handler(request: Request) -> JSONResponse:
            body = await parse_body(request, KeyRequest)
            await x11.run("xdotool", verb, "--", actions.keysym(body.key))
            return json_response({})

        return handler

    # --- screen ------------------------------------------------------------------------

    def screenshot_route(region: bool, compressed: bool) -> Any:
        query = {(False, False): ScreenshotQuery, (True, False): RegionQuery,
                 (False, True): CompressedQuery, (True, True): CompressedRegionQuery}[(region, compressed)]

        @operation(summary="Screenshot" + (" of a region" if region else "") + (" (png/jpeg, scaled)" if compressed else " (PNG)"),
                   query=query, response=ScreenshotResponse, errors=UNAVAILABLE)
        async def handler(request: Request) -> JSONResponse:
            return json_response(await actions.screenshot(x11, **_screenshot_query(request, region=region, compressed=compressed)))

        return handler

    @operation(summary="The display's geometry", response=DisplayInfoResponse, errors=UNAVAILABLE)
    async def display_info(request: Request) -> JSONResponse:
        width, height = await actions.display_size(x11)
        return json_response({"displays": [{"id": 0, "x": 0, "y": 0, "width": width, "height": height, "isActive": True}]})

    @operation(summary="Visible top-level windows", response=WindowsResponse, errors=UNAVAILABLE)
    async def display_windows(request: Request) -> JSONResponse:
        return json_response({"windows": await actions.windows(x11)})

    # --- accessibility -----------------------------------------------------------------

    @operation(summary="Accessibility (AT-SPI): not available here", errors={503: "A11Y_UNAVAILABLE"})
    async def a11y(request: Request) -> JSONResponse:
        raise DaemonError(
            Code.A11Y_UNAVAILABLE,
            "accessibility is unavailable: this daemon has no AT-SPI bus; use screenshots, "
            "/computeruse/display/windows and the mouse/keyboard endpoints instead",
        )

    prefix = "/computeruse"
    return [
        Route(f"{prefix}/start", start, methods=["POST"]),
        Route(f"{prefix}/stop", stop, methods=["POST"]),
        Route(f"{prefix}/process-status", status, methods=["GET"]),
        Route(f"{prefix}/status", status, methods=["GET"]),
        Route(f"{prefix}/process/{{processName}}/status", process_status, methods=["GET"]),
        Route(f"{prefix}/process/{{processName}}/restart", process_restart, methods=["POST"]),
        Route(f"{prefix}/process/{{processName}}/logs", process_logs, methods=["GET"]),
        Route(f"{prefix}/process/{{processName}}/errors", process_errors, methods=["GET"]),
        Route(f"{prefix}/mouse/position", mouse_position, methods=["GET"]),
        Route(f"{prefix}/mouse/move", mouse_move, methods=["POST"]),
        Route(f"{prefix}/mouse/click", mouse_click, methods=["POST"]),
        Route(f"{prefix}/mouse/drag", mouse_drag, methods=["POST"]),
        Route(f"{prefix}/mouse/scroll", mouse_scroll, methods=["POST"]),
        Route(f"{prefix}/mouse/down", button_route("mousedown"), methods=["POST"]),
        Route(f"{prefix}/mouse/up", button_route("mouseup"), methods=["POST"]),
        Route(f"{prefix}/keyboard/type", keyboard_type, methods=["POST"]),
        Route(f"{prefix}/keyboard/key", keyboard_key, methods=["POST"]),
        Route(f"{prefix}/keyboard/hotkey", keyboard_hotkey, methods=["POST"]),
        Route(f"{prefix}/keyboard/down", key_route("keydown"), methods=["POST"]),
        Route(f"{prefix}/keyboard/up", key_route("keyup"), methods=["POST"]),
        Route(f"{prefix}/screenshot", screenshot_route(False, False), methods=["GET"]),
        Route(f"{prefix}/screenshot/region", screenshot_route(True, False), methods=["GET"]),
        Route(f"{prefix}/screenshot/compressed", screenshot_route(False, True), methods=["GET"]),
        Route(f"{prefix}/screenshot/region/compressed", screenshot_route(True, True), methods=["GET"]),
        Route(f"{prefix}/display/info", display_info, methods=["GET"]),
        Route(f"{prefix}/display/windows", display_windows, methods=["GET"]),
        Route(f"{prefix}/a11y/tree", a11y, methods=["GET"]),
        Route(f"{prefix}/a11y/find", a11y, methods=["POST"]),
        Route(f"{prefix}/a11y/node/focus", a11y, methods=["POST"]),
        Route(f"{prefix}/a11y/node/invoke", a11y, methods=["POST"]),
        Route(f"{prefix}/a11y/node/value", a11y, methods=["POST"]),
        *build_recording_routes(daemon, x11),
    ]
