"""REPL worker: one per interpreter context, run by the sandbox's own `python3`.

Standalone on purpose (imports nothing from the daemon): it runs under the user's Python,
with the user's packages. Protocol over two pipes whose fd numbers come in argv:
requests and events are frames of a 4-byte big-endian length plus a UTF-8 JSON object.

  request: {"code": str, "envs": {str: str}}
  events:  {"type": "stdout"|"stderr", "text": str}
           {"type": "error", "name": str, "value": str, "traceback": str}
           {"type": "done", "status": "completed"|"interrupted"}

Globals persist between requests. SIGINT interrupts the running code (KeyboardInterrupt).
"""

import codecs
import io
import json
import os
import signal
import struct
import sys
import threading
import traceback

FLUSH_AT = 1024
# One huge write still leaves as frames of at most this many characters.
MAX_FRAME_TEXT = 4096
# Error fields are cut to keep every frame below the SDK's 64 KiB WebSocket message limit.
MAX_ERROR_FIELD = 16 * 1024


def clip(text):
    return text if len(text) <= MAX_ERROR_FIELD else text[: MAX_ERROR_FIELD - 15] + "... [truncated]"


class Channel:
    def __init__(self, read_fd, write_fd):
        self.reader = os.fdopen(read_fd, "rb", buffering=0)
        self.write_fd = write_fd
        self.lock = threading.Lock()

    def _read_exact(self, size):
        data = b""
        while len(data) < size:
            chunk = self.reader.read(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def receive(self):
        header = self._read_exact(4)
        if header is None:
            return None
        body = self._read_exact(struct.unpack(">I", header)[0])
        return None if body is None else json.loads(body.decode("utf-8"))

    def send(self, message):
        body = json.dumps(message).encode("utf-8")
        frame = struct.pack(">I", len(body)) + body
        with self.lock:
            view = memoryview(frame)
            while view:
                view = view[os.write(self.write_fd, view):]


class BinaryWriter(io.RawIOBase):
    """`sys.stdout.buffer`: bytes written by libraries, decoded without splitting characters."""

    def __init__(self, text_writer):
        self.text_writer = text_writer
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self):
        return True

    def write(self, data):
        self.text_writer.write(self.decoder.decode(bytes(data)))
        return len(data)

    def flush(self):
        self.text_writer.flush()


class StreamWriter(io.TextIOBase):
    """sys.stdout/sys.stderr replacement: flushes on newline or FLUSH_AT buffered chars."""

    def __init__(self, channel, name):
        self.channel = channel
        self.name = name
        self.buffer_parts = []
        self.size = 0
        self.lock = threading.RLock()
        self.buffer = BinaryWriter(self)

    def writable(self):
        return True

    @property
    def encoding(self):
        return "utf-8"

    def isatty(self):
        return False

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self.lock:
            self.buffer_parts.append(text)
            self.size += len(text)
            if "\n" in text or self.size >= FLUSH_AT:
                self.flush()
        return len(text)

    def flush(self):
        with self.lock:
            if not self.buffer_parts:
                return
            text = "".join(self.buffer_parts)
            self.buffer_parts = []
            self.size = 0
        for start in range(0, len(text), MAX_FRAME_TEXT):
            self.channel.send({"type": self.name, "text": text[start : start + MAX_FRAME_TEXT]})


def clean_traceback(exc):
    """The user's frames only, shown as File "<stdin>" (the worker's own frame dropped)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


executing = False


def on_sigint(signum, frame):
    if executing:
        raise KeyboardInterrupt


def run(channel, namespace, request):
    global executing
    saved_env = dict(os.environ)
    for key, value in (request.get("envs") or {}).items():
        os.environ[key] = value
    status = "completed"
    try:
        try:
            executing = True
            code = compile(request["code"], "<stdin>", "exec")
            exec(code, namespace)
        finally:
            executing = False
    except KeyboardInterrupt:
        status = "interrupted"
    except SystemExit:
        pass
    except BaseException as exc:  # noqa: BLE001 - every user error is reported, none kills the worker
        sys.stdout.flush()
        sys.stderr.flush()
        channel.send({"type": "error", "name": type(exc).__name__, "value": clip(str(exc)),
                      "traceback": clip(clean_traceback(exc))})
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    return status


def main():
    channel = Channel(int(sys.argv[1]), int(sys.argv[2]))
    sys.stdout = StreamWriter(channel, "stdout")
    sys.stderr = StreamWriter(channel, "stderr")
    sys.stdin = io.StringIO("")
    signal.signal(signal.SIGINT, on_sigint)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    while True:
        try:
            request = channel.receive()
            if request is None:
                return
            status = run(channel, namespace, request)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - user code may have replaced the stream
                    pass
            sys.stdout, sys.stderr = (
                sys.stdout if isinstance(sys.stdout, StreamWriter) else StreamWriter(channel, "stdout"),
                sys.stderr if isinstance(sys.stderr, StreamWriter) else StreamWriter(channel, "stderr"),
            )
            channel.send({"type": "done", "status": status})
        except KeyboardInterrupt:
            continue  # a late interrupt between requests: nothing to stop


if __name__ == "__main__":
    main()
