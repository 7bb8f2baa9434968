# The warm interpreter behind /process/code-run (a "zygote", like multiprocessing's fork
# server). Not imported by the daemon: this file is a script. The daemon runs its text as
# `python3 -u -c '<this text>' <fd>` through the same shell as a code run, so the
# interpreter, its start-up and its environment are exactly the ones a run would get.
#
# Protocol, on the SOCK_SEQPACKET socket <fd> inherited from the daemon:
# - once, zygote -> daemon: b"ready\0" + sys.executable + b"\0" + the NUL-separated
#   K=V environment this interpreter started with (the shell and any launcher, such as a
#   pyenv shim, may have changed it: the daemon applies the same changes to every run);
# - per run, daemon -> zygote: b"run" with three file descriptors: the read end of a pipe
#   carrying the run (header, then the code), the output file (stdout and stderr), and
#   the write end of a status pipe. The zygote forks; it writes b"pid N\n" to the status
#   pipe at once and b"exit S\n" (the raw wait status) when the child has exited, or
#   b"fail E\n" (an errno) when it could not fork.
# The child starts its own session, takes the pipe as stdin and the output as stdout and
# stderr, reads the run to EOF (as `python3 -` reads its program), forgets every module
# this file imported, and runs the code in a fresh __main__ at the top level below.
import sys

_dtn_fresh_modules = frozenset(sys.modules)  # what a fresh `python3 -u -` has loaded
_dtn_loader = globals()["__loader__"]


def _dtn_serve(channel: int):
    import gc
    import os
    import select
    import socket

    sock = socket.socket(fileno=channel)
    env = b"\0".join(key + b"=" + value for key, value in os.environb.items())
    sock.send(b"ready\0" + os.fsencode(sys.executable) + b"\0" + env)
    # Start-up objects move to the permanent generation: a child's collections (and the
    # one at exit) then skip them instead of writing to, and so copying, every page.
    gc.collect()
    gc.freeze()
    poller = select.poll()
    poller.register(channel, select.POLLIN)
    running: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status fd)
    while True:
        for fd, _events in poller.poll():
            if fd != channel:
                pid, status_fd = running.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _pid, status = os.waitpid(pid, 0)
                try:
                    os.write(status_fd, b"exit %d\n" % status)
                except OSError:
                    pass  # the daemon gave up on this run
                os.close(status_fd)
                continue
            try:
                message, fds, _flags, _addr = socket.recv_fds(sock, 16, 3)
            except InterruptedError:
                continue
            if not message:
                os._exit(0)  # the daemon is gone
            if message != b"run" or len(fds) != 3:
                for extra in fds:
                    os.close(extra)
                continue
            code_fd, output_fd, status_fd = fds
            try:
                pid = os.fork()
            except OSError as exc:  # out of pids or memory: this run fails, the zygote stays
                pid = -(exc.errno or 1)
            if pid == 0:
                for pidfd, (_pid, other_status) in running.items():
                    os.close(pidfd)
                    os.close(other_status)
                sock.close()
                os.close(status_fd)
                return code_fd, output_fd
            os.close(code_fd)
            os.close(output_fd)
            try:
                if pid < 0:
                    raise OSError(-pid, "fork failed")
                pidfd = os.pidfd_open(pid)
            except OSError as exc:
                if pid > 0:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                try:
                    os.write(status_fd, b"fail %d\n" % (exc.errno or 0))
                except OSError:
                    pass
                os.close(status_fd)
                continue
            try:
                os.write(status_fd, b"pid %d\n" % pid)
            except OSError:
                pass
            running[pidfd] = (pid, status_fd)
            poller.register(pidfd, select.POLLIN)


def _dtn_child(code_fd: int, output_fd: int):
    import os

    os.setsid()  # its own session and process group: timeouts kill the whole tree
    os.dup2(code_fd, 0)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
    chunks = []
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    del chunks
    try:
        magic, cwd, count, rest = data.split(b"\0", 3)
        argv = rest.split(b"\0", int(count))
        count, rest = argv.pop().split(b"\0", 1)
        env = rest.split(b"\0", int(count))
        size, code = env.pop().split(b"\0", 1)
        if magic != b"dtn1" or len(code) != int(size):
            raise ValueError("cut short")  # the daemon gave up while sending: run nothing
    except ValueError:
        os._exit(255)
    del data, rest
    os.chdir(cwd)
    for key in list(os.environb):
        del os.environb[key]
    for item in env:
        key, _sep, value = item.partition(b"=")
        os.environb[key] = value
    words = [os.fsdecode(word) for word in argv]
    sys.argv = ["-", *words]
    sys.orig_argv = [sys.orig_argv[0], "-u", "-", *words]
    for name in list(sys.modules):
        if name not in _dtn_fresh_modules:
            del sys.modules[name]
    main = type(sys)("__main__")
    main.__loader__ = _dtn_loader
    main.__dict__.update(
        __annotations__={}, __builtins__=sys.modules["builtins"], __file__="<stdin>", __cached__=None,
    )
    sys.modules["__main__"] = main
    return code, main


_dtn_code, _dtn_main = _dtn_child(*_dtn_serve(int(sys.argv[1])))
try:
    exec(compile(_dtn_code, "<stdin>", "exec", dont_inherit=True), _dtn_main.__dict__)  # noqa: S102 (the point)
except SystemExit:
    raise
except BaseException as _dtn_error:  # noqa: BLE001 (reported as the interpreter would)
    # As the interpreter reports an uncaught exception, without this file's frame.
    # (The hook prints the exception's own __traceback__, so that is what is cut.)
    _dtn_tb = _dtn_error.__traceback__
    _dtn_error.__traceback__ = _dtn_tb.tb_next if _dtn_tb else None
    del _dtn_tb
    sys.excepthook(type(_dtn_error), _dtn_error, _dtn_error.__traceback__)
    # An uncaught KeyboardInterrupt ends Python with SIGINT: the shell reported 130.
    sys.exit(130 if isinstance(_dtn_error, KeyboardInterrupt) else 1)
