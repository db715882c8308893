"""Start-up without the start-up cost: the `prunebench` command, and a fork server for it.

Every workflow job is one `prunebench` process, and importing torch and the registries costs
~2.5 s on a small CPU: more than a small grid point's work. When the workflow runs locally,
it starts a server (`serve`) that imports all of that once and then forks one child per
job. The `prunebench` command stays the same: if `PRUNEBENCH_SERVER` names a live server,
it hands the server its arguments, working directory, environment and its stdin, stdout and
stderr (as file descriptors, so the job writes straight into its own log), and exits with
the child's status. Anything else (no server, a compute node that cannot reach it) runs the
command in this process, exactly as before.

The child is a fresh `fork()` of a process that has imported torch but run no torch
operation (so no thread pool or CUDA context exists yet): it sets its own thread count,
seeds and device, as a new process would, and its results are bit-identical to a direct
run's (tests/test_launcher.py). If the client dies (Snakemake cancelled the job), the
server kills the child; if the process that started the server dies, the server exits.

    python -m prunebench.launcher serve SOCKET --parent PID
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

ENV_SERVER = "PRUNEBENCH_SERVER"
ENV_LAUNCHER = "PRUNEBENCH_LAUNCHER"  # "server" inside a forked child, for the manifest
_LEN = struct.Struct("!I")
_STATUS = struct.Struct("!i")
# What jobs import: prunebench, and what it imports lazily at ~3 s a job (FlopCounterMode
# pulls in torch._dynamo). Importing defines modules; it runs no torch operation.
PRELOAD = ("prunebench.cli", "prunebench.stages", "prunebench.executor", "prunebench.plan",
           "prunebench.metrics", "torch._dynamo", "torch.utils.flop_counter", "thop",
           "torch_pruning", "prunebench.analysis.pages")  # pages: pandas, matplotlib (Agg)


def main() -> int:
    """The `prunebench` console command."""
    path = os.environ.get(ENV_SERVER)
    if path:
        status = delegate(path, sys.argv[1:])
        if status is not None:
            return status
    from prunebench.cli import main as cli_main

    return cli_main()


# ---------------------------------------------------------------------------- client


def delegate(path: str, argv: list[str]) -> int | None:
    """Run `argv` in a child of the server at `path`; its exit status, or None when there is
    no server to reach (the caller then runs the command itself)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError:
        return None
    with sock:
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        try:
            socket.send_fds(sock, [_LEN.pack(len(request)) + request], [0, 1, 2])
        except OSError:
            return None
        reply = _recv_exactly(sock, _STATUS.size)
    if reply is None:
        print("prunebench: the job server went away while running this job", file=sys.stderr)
        return 1
    return _STATUS.unpack(reply)[0]


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


# ---------------------------------------------------------------------------- server


def serve(path: str, parent: int | None = None) -> None:
    """Accept jobs on the unix socket `path` until SIGTERM or until `parent` exits."""
    import importlib

    import threading

    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:  # an optional dependency: the job imports it, or fails, itself
            pass
    if threading.active_count() > 1:  # forking a process with threads can deadlock the child
        raise RuntimeError(f"the job server has {threading.active_count()} threads after its "
                           "imports; it must have one to fork jobs safely")
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}  # pid -> client connection
    print(f"prunebench job server on {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        while not stopping and (parent is None or _alive(parent)):
            for key, _ in selector.select(timeout=0.2):
                if key.fileobj is listener:
                    conn, _ = listener.accept()
                    pid = _start(conn, listener, selector, children)
                    if pid is not None:
                        children[pid] = conn
                        selector.register(conn, selectors.EVENT_READ, pid)
                else:  # a client closed its end: its job was cancelled
                    pid = key.data
                    selector.unregister(key.fileobj)
                    _kill(pid)
            _reap(children, selector)
    finally:
        for pid in list(children):
            _kill(pid)
        _reap(children, selector, block=True)
        listener.close()
        if os.path.exists(path):
            os.unlink(path)


def _start(conn, listener, selector, children) -> int | None:
    """Read one request from `conn` and fork its child; the child's pid."""
    try:
        header, fds, _, _ = socket.recv_fds(conn, _LEN.size, 3)
        if len(header) < _LEN.size or len(fds) != 3:
            raise OSError("incomplete request")
        body = _recv_exactly(conn, _LEN.unpack(header)[0])
        if body is None:
            raise OSError("incomplete request")
        request = json.loads(body)
    except (OSError, ValueError):
        conn.close()
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            selector.close()
            listener.close()
            for other in children.values():
                other.close()
            conn.close()
            status = _child(request, fds)
        except BaseException:  # noqa: BLE001 (the child must never return into the server)
            import traceback

            traceback.print_exc()
            status = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status if isinstance(status, int) else 1)
    for fd in fds:
        os.close(fd)
    return pid


def _child(request: dict, fds: list[int]) -> int:
    """Become the job: the client's stdio, directory and environment, then the CLI."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop(ENV_SERVER, None)
    os.environ[ENV_LAUNCHER] = "server"
    sys.argv = ["prunebench", *request["argv"]]
    from prunebench.cli import main as cli_main

    try:
        return cli_main(request["argv"])
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)


def _reap(children: dict, selector, block: bool = False) -> None:
    deadline = time.monotonic() + 10
    while children:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code  # killed by a signal: the shell's convention
        try:
            selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        try:
            conn.sendall(_STATUS.pack(code))
        except OSError:
            pass
        conn.close()
        if block and time.monotonic() > deadline:
            for other in children:
                _kill(other, signal.SIGKILL)


def _kill(pid: int, sig: int = signal.SIGTERM) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_server(path: str, parent: int, log_path: str, timeout: float = 60.0) -> int:
    """Start a server on `path` in the background (for the workflow's `onstart`), writing
    its own messages to `log_path`; its pid, once it accepts connections."""
    import subprocess

    if os.path.exists(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 (the server's stderr, closed when it exits)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunebench.launcher", "serve", path, "--parent", str(parent)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the prunebench job server exited with {proc.returncode}; "
                               f"see {log.name}")
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(path)
                return proc.pid
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the prunebench job server did not start within {timeout:.0f} s")


def stop_server(pid: int) -> None:
    _kill(pid)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m prunebench.launcher")
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="serve jobs on a unix socket")
    srv.add_argument("socket")
    srv.add_argument("--parent", type=int, help="exit when this process exits")
    args = parser.parse_args()
    serve(args.socket, args.parent)
