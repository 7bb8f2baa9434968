"""The daemon's side of one REPL worker: spawn it, send a request, read its events, stop it."""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import shutil
import signal
import struct
import sys
from pathlib import Path

from toolbox.process.groups import kill_tree_now, signal_group

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
# Output a program writes to its fds 1/2 directly (subprocesses, C extensions) bypasses the
# worker's framed sys.stdout; it is forwarded in chunks of at most this size.
RAW_CHUNK = 4096
# sys.stdout/sys.stderr output arrives as the client's frame already (worker.py
# send_output): queued as bytes, stored and sent as they are. Decoding and re-encoding the
# JSON was 60 of the daemon's 70 ms of CPU time for a 10 MB print.
OUTPUT_FRAME_HEADS = (b'{"type": "stdout", "text": "', b'{"type": "stderr", "text": "')
OUTPUT_FRAME_TAIL = b'", "name": "", "value": "", "traceback": ""}'

# An event: a parsed control event (or raw fd output), a ready output frame, or None when
# the worker has gone away.
Event = dict[str, str] | bytes | None


def find_python() -> str:
    """The sandbox's python3 (user packages), falling back to the daemon's interpreter."""
    return shutil.which("python3") or shutil.which("python") or sys.executable


class WorkerProcess:
    """A running `worker.py`. Its framed events and raw fd 1/2 output arrive on one queue;
    `None` on the queue means the worker has gone away."""

    def __init__(self, process: asyncio.subprocess.Process, requests: int, events: asyncio.StreamReader) -> None:
        self.process = process
        self._requests = requests
        # Bounded: when the execution stops taking events (its client lags), the readers
        # stop reading the pipes and the worker blocks on its own output.
        self.events: asyncio.Queue[Event] = asyncio.Queue(maxsize=256)
        loop = asyncio.get_running_loop()
        self._readers = [
            loop.create_task(self._read_events(events)),
            loop.create_task(self._read_raw(process.stdout, "stdout")),
            loop.create_task(self._read_raw(process.stderr, "stderr")),
        ]

    @classmethod
    async def start(cls, cwd: Path) -> "WorkerProcess":
        request_read, request_write = os.pipe()
        event_read, event_write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                find_python(), "-u", str(WORKER_SCRIPT), str(request_read), str(event_write),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                pass_fds=(request_read, event_write),
                start_new_session=True,  # own process group: interrupts and kills reach its children
            )
        except BaseException:
            for fd in (request_read, request_write, event_read, event_write):
                os.close(fd)
            raise
        os.close(request_read)
        os.close(event_write)
        loop = asyncio.get_running_loop()
        # A small limit: the reader pauses the pipe above 2x this, so a worker whose output
        # is not being taken blocks instead of filling the daemon's memory.
        events = asyncio.StreamReader(limit=64 * 1024)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(events), os.fdopen(event_read, "rb", 0))
        os.set_blocking(request_write, False)
        return cls(process, request_write, events)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def _read_events(self, events: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await events.readexactly(4)
                body = await events.readexactly(struct.unpack(">I", header)[0])
                # A newline would split one frame in two in the store (it never is in JSON
                # the worker writes; user code could write the pipe itself).
                if body.startswith(OUTPUT_FRAME_HEADS) and body.endswith(OUTPUT_FRAME_TAIL) and b"\n" not in body:
                    await self.events.put(body)
                else:
                    await self.events.put(json.loads(body))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            await self.events.put(None)

    async def _read_raw(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # never split a character
        while chunk := await stream.read(RAW_CHUNK):
            text = decoder.decode(chunk)
            if text:
                await self.events.put({"type": name, "text": text})

    async def send(self, request: dict[str, object]) -> None:
        body = json.dumps(request).encode("utf-8")
        view = memoryview(struct.pack(">I", len(body)) + body)
        loop = asyncio.get_running_loop()
        while view:
            try:
                view = view[os.write(self._requests, view):]
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(self._requests, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(self._requests)

    def interrupt(self) -> None:
        """SIGINT to the worker's group: KeyboardInterrupt in the code, Ctrl+C for its children."""
        if self.alive:
            signal_group(self.process.pid, signal.SIGINT)

    async def stop(self) -> None:
        kill_tree_now(self.process.pid)  # also children that left the group
        await self.process.wait()
        for reader in self._readers:
            reader.cancel()
        try:
            os.close(self._requests)
        except OSError:
            pass
