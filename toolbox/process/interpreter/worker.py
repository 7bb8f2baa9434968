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
import time
import traceback
import types

FLUSH_AT = 1024
# A line is sent at once unless another flush happened less than LINGER seconds ago; then
# it waits (at most LINGER) to travel with the lines after it: a tight print loop becomes
# a few hundred frames a second instead of one frame per line.
LINGER = 0.02
# One huge write leaves as frames whose text takes at most this many bytes once JSON-encoded
# as the daemon sends it (escapes and \\uXXXX included): with the frame's other keys, every
# WebSocket message stays below the SDK's 64 KiB limit. Budgeting bytes rather than
# characters makes a 10 MB print ~170 frames instead of 2,444 of 4,096 characters.
MAX_FRAME_BYTES = 60 * 1024
# Error fields are cut to at most this many characters and JSON-encoded bytes, to keep every
# frame below the SDK's 64 KiB WebSocket message limit.
MAX_ERROR_FIELD = 16 * 1024
TRUNCATED = "... [truncated]"


# The keys an output frame has besides type and text (toolbox/process/interpreter/service.py
# frame(); worker_process.py recognises frames that end so).
OUTPUT_FRAME_TAIL = ', "name": "", "value": "", "traceback": ""}'


def split_for_frames(text, budget=MAX_FRAME_BYTES):
    """Consecutive pieces of `text` with their JSON strings, each at most `budget` bytes.

    Each piece is encoded once, and that encoding is what is sent: plain ASCII fits at the
    first try (the budget less the two quotes). Measuring with one encoding, then sending
    another, made a 10 MB print three encoder passes instead of one (~80 ms of the
    worker's CPU against ~27 ms)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + budget - 2)
        encoded = json.dumps(text[start:end])
        while len(encoded) > budget:  # escapes or non-ASCII: shrink in proportion, re-encode
            end = start + max(1, (end - start) * budget // len(encoded))
            encoded = json.dumps(text[start:end])
        yield text[start:end], encoded
        start = end


def clip(text):
    if len(text) <= MAX_ERROR_FIELD and len(json.dumps(text)) <= MAX_ERROR_FIELD:
        return text
    return next(split_for_frames(text, MAX_ERROR_FIELD - len(TRUNCATED) - 2))[0] + TRUNCATED


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
        self.send_body(json.dumps(message).encode("utf-8"))

    def send_output(self, name, encoded):
        """stdout/stderr (`encoded`: the text as a JSON string), already in the shape of the
        frame the client gets (all its keys): the daemon passes it on as it is, without
        decoding and re-encoding the text."""
        self.send_body(f'{{"type": "{name}", "text": {encoded}{OUTPUT_FRAME_TAIL}'.encode("utf-8"))

    def send_body(self, body):
        global main_sending, interrupt_pending
        frame = struct.pack(">I", len(body)) + body
        in_main = threading.get_ident() == MAIN_THREAD
        with self.lock:
            # A KeyboardInterrupt halfway through a frame would corrupt the stream: while
            # the main thread writes one, SIGINT is only noted, and raised right after.
            if in_main:
                main_sending = True
            try:
                view = memoryview(frame)
                while view:
                    view = view[os.write(self.write_fd, view):]
            finally:
                if in_main:
                    main_sending = False
        if in_main and interrupt_pending and executing:
            interrupt_pending = False
            raise KeyboardInterrupt


class Output:
    """Pending stdout and stderr text in write order, sent as frames in that same order."""

    def __init__(self, channel):
        self.channel = channel
        self.lock = threading.RLock()
        self.segments = []  # [name, [parts]]; consecutive writes to one stream share a segment
        self.size = 0
        self.last_flush = 0.0

    def write(self, name, text):
        with self.lock:
            if self.segments and self.segments[-1][0] == name:
                self.segments[-1][1].append(text)
            else:
                self.segments.append([name, [text]])
            self.size += len(text)
            if self.size >= FLUSH_AT or ("\n" in text and time.monotonic() - self.last_flush >= LINGER):
                self.flush()

    def flush(self):
        with self.lock:
            segments, self.segments, self.size = self.segments, [], 0
            self.last_flush = time.monotonic()
            for name, parts in segments:
                for _, encoded in split_for_frames("".join(parts)):
                    self.channel.send_output(name, encoded)

    def flush_lingering_forever(self):
        # SIGINT must reach the main thread (the user's code), never this one.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while True:
            time.sleep(LINGER)
            with self.lock:
                if self.segments and time.monotonic() - self.last_flush >= LINGER:
                    self.flush()


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
    """sys.stdout/sys.stderr replacement writing into the shared, ordered Output."""

    def __init__(self, output, name):
        self.output = output
        self.name = name
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
        if text:
            self.output.write(self.name, text)
        return len(text)

    def flush(self):
        self.output.flush()


def after_fork_in_child():
    """A forked child (multiprocessing) must not write frames into the parent's channel:
    its prints go to fds 1/2, which the daemon forwards as stdout/stderr too."""
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def clean_traceback(exc):
    """The user's frames only, shown as File "<stdin>" (the worker's own frame dropped)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


MAIN_THREAD = threading.get_ident()
executing = False
main_sending = False
interrupt_pending = False


def on_sigint(signum, frame):
    global interrupt_pending
    if not executing:
        return
    if main_sending:
        interrupt_pending = True
        return
    raise KeyboardInterrupt


def run(channel, output, namespace, request):
    global executing, interrupt_pending
    interrupt_pending = False
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
        output.flush()
        channel.send({"type": "error", "name": type(exc).__name__, "value": clip(str(exc)),
                      "traceback": clip(clean_traceback(exc))})
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    return status


def main():
    channel = Channel(int(sys.argv[1]), int(sys.argv[2]))
    output = Output(channel)
    stdout, stderr = StreamWriter(output, "stdout"), StreamWriter(output, "stderr")
    sys.stdout, sys.stderr = stdout, stderr
    sys.stdin = io.StringIO("")
    os.register_at_fork(after_in_child=after_fork_in_child)
    threading.Thread(target=output.flush_lingering_forever, name="output-flusher", daemon=True).start()
    signal.signal(signal.SIGINT, on_sigint)
    # The user's globals are the __main__ module's, as in `python -i`: pickle (multiprocessing)
    # finds functions defined by earlier executions under __main__.
    user_main = types.ModuleType("__main__")
    user_main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = user_main
    namespace = user_main.__dict__
    while True:
        try:
            request = channel.receive()
            if request is None:
                return
            status = run(channel, output, namespace, request)
            for stream in (sys.stdout, sys.stderr):  # user code may have wrapped them
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001
                    pass
            sys.stdout, sys.stderr = stdout, stderr
            output.flush()
            channel.send({"type": "done", "status": status})
        except KeyboardInterrupt:
            continue  # a late interrupt between requests: nothing to stop


if __name__ == "__main__":
    main()
