"""A Docker engine of our own, for the tests and for machines where none runs.

``PrivateDockerd`` starts ``dockerd`` as our child with host networking only (no iptables
rules, no bridge network), its own socket and run directory, and a data root kept across runs
(``/var/cache/ari-bridge/docker`` by default) so images built once are reused. It is stopped by
its PID. One private engine uses a data root at a time: a lock file next to it makes a second
one wait (bounded) rather than corrupt it.

Example::

    with PrivateDockerd() as engine:
        os.environ["DOCKER_HOST"] = engine.url
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from bridge.lab._model import LabError, tail

#: Where images and layers are kept between runs.
DEFAULT_DATA_ROOT = Path("/var/cache/ari-bridge/docker")
#: The default engine's socket, used when it answers.
SYSTEM_SOCKET = "/var/run/docker.sock"
#: Seconds to wait for the engine's API, for its exit after SIGTERM (it stops its containers
#: first), and for another private engine to release the data root.
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 30.0
LOCK_DEADLINE_S = 900.0


def ping(url: str, timeout_s: float = 2.0) -> bool:
    """True when the Docker API at ``unix://PATH`` answers ``GET /_ping`` with OK."""
    path = url.removeprefix("unix://")
    if path == url or not Path(path).exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n", 1)[0]


def reachable_engine() -> str | None:
    """The URL of a Docker engine that answers: $DOCKER_HOST (a unix socket), else the
    system's socket; None when neither does."""
    for url in (os.environ.get("DOCKER_HOST", ""), f"unix://{SYSTEM_SOCKET}"):
        if url.startswith("unix://") and ping(url):
            return url
    return None


class PrivateDockerd:
    """``dockerd`` as our own child process; see the module docstring."""

    def __init__(self, data_root: Path = DEFAULT_DATA_ROOT) -> None:
        self.data_root = data_root
        self.proc: subprocess.Popen[bytes] | None = None
        #: Per-run directory (socket, PID file, containerd state, log); short, for socket paths.
        self.run_dir: Path | None = None
        self._lock: int | None = None
        self._children: list[int] = []

    @property
    def socket_path(self) -> Path:
        assert self.run_dir is not None, "not started"
        return self.run_dir / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        assert self.run_dir is not None, "not started"
        return self.run_dir / "dockerd.log"

    def start(self) -> PrivateDockerd:
        if os.geteuid() != 0:
            raise LabError("starting dockerd needs root")
        binary = shutil.which("dockerd")
        if binary is None:
            raise LabError("dockerd is not installed: apt-get install docker.io")
        self.data_root.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            # Holding the lock, any engine on this data root is one a killed session left.
            for pid, run_dir in _orphans(self.data_root):
                _stop_leftover(pid, run_dir)
                _unmount_below(run_dir)
                shutil.rmtree(run_dir, ignore_errors=True)
            self.run_dir = Path(tempfile.mkdtemp(prefix=Path(RUN_DIR_PREFIX).name,
                                                 dir=str(Path(RUN_DIR_PREFIX).parent)))
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [binary,
                     # Host networking only: no iptables rules, no NAT, no docker0 bridge.
                     "--iptables=false", "--ip-masq=false", "--bridge=none",
                     "--data-root", str(self.data_root),
                     "--exec-root", str(self.run_dir / "exec"),
                     "--host", self.url,
                     "--pidfile", str(self.run_dir / "docker.pid")],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            self._wait_ready()
            # dockerd starts its own containerd; remember it in case dockerd must be killed.
            self._children = _children_of(self.proc.pid)
        except BaseException:
            self.stop()
            raise
        return self

    def _take_lock(self) -> None:
        lock_path = self.data_root.with_name(self.data_root.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_DEADLINE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LabError(
                        f"another private dockerd has used {self.data_root} for "
                        f"{LOCK_DEADLINE_S:.0f} s (lock {lock_path}); stop it or use "
                        "another data root") from None
                time.sleep(1)
        self._lock = fd

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"dockerd exited with {self.proc.returncode} during start-up:\n"
                               + tail(self.log_path))
            if ping(self.url):
                return
            time.sleep(0.2)
        raise LabError(f"dockerd did not answer on {self.socket_path} within "
                       f"{START_DEADLINE_S:.0f} s:\n" + tail(self.log_path))

    def stop(self) -> None:
        """SIGTERM to our dockerd (it stops its containers and containerd), SIGKILL after
        STOP_DEADLINE_S; then its containerd by PID if it outlived it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # our own child, by PID
            try:
                self.proc.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self._children:
            _stop_leftover(pid, self.run_dir)
        self._children = []
        self.proc = None
        if self.run_dir is not None:
            _unmount_below(self.run_dir)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def __enter__(self) -> PrivateDockerd:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


RUN_DIR_PREFIX = "/tmp/ari-bridge-dockerd-"


def _orphans(data_root: Path) -> list[tuple[int, Path]]:
    """(PID, run directory) of each dockerd this module started on ``data_root`` that still
    runs: its command line names the data root and one of our run directories."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace")
                    for a in (proc / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if not argv or Path(argv[0]).name != "dockerd":
            continue
        opts = dict(itertools.pairwise(argv[1:]))
        exec_root = opts.get("--exec-root", "")
        if (opts.get("--data-root") == str(data_root)
                and exec_root.startswith(RUN_DIR_PREFIX)):
            found.append((int(proc.name), Path(exec_root).parent))
    return found


def _unmount_below(run_dir: Path) -> None:
    """Unmount what dockerd left mounted in our run directory (its network namespace file)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = f"{run_dir}/"
    targets = [fields[1] for line in mounts if len(fields := line.split()) > 1
               and fields[1].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):  # deepest first
        subprocess.run(["umount", target], check=False, capture_output=True)


def _children_of(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.extend(int(p) for p in text.split())
    return found


def _stop_leftover(pid: int, run_dir: Path | None) -> None:
    """Stop a child of our dockerd that outlived it, if it still is that child (its command
    line names our run directory)."""
    if run_dir is None:
        return
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if str(run_dir).encode() not in argv:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


__all__ = ["DEFAULT_DATA_ROOT", "PrivateDockerd", "ping", "reachable_engine"]
