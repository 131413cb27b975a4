"""The "rootfs" lab engine: Asterisk from Debian in a debootstrap tree.

The root filesystem is built once per suite under ``cache_dir`` and shared
by every lab instance. Each instance lives in its own directory inside the
tree (``/srv/ari-bridge-labs/<id>``) holding its rendered configuration,
run, spool, log, database and cache directories, and runs as
``chroot <rootfs> /usr/sbin/asterisk -f -C <instance>/etc/asterisk.conf``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bridge.lab._model import (
    LOG_NAME,
    PID_NAME,
    LabError,
    LabInfo,
    LabOptions,
    check_ports_free,
    check_same_slots,
    info_from_state,
    instance_id,
    load_state,
    password_for,
    read_password,
    resolve_config_dir,
    save_state,
    tail,
    wait_for_ari,
    write_credentials,
)
from bridge.lab.layout import LABS_DIR, PACKAGES, ROOTFS_LAYOUT, STAMP_NAME
from bridge.lab.render import ARI_USERNAME, INSTANCE_DIR_KEYS, lab_overrides, render_config

ASTERISK = "/usr/sbin/asterisk"
#: File in each instance directory naming its state directory.
OWNER_NAME = "state-dir"
#: Seconds to wait for ARI after start, and for exit after SIGTERM.
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0

# Asterisk processes started by this Python process, so they can be reaped.
_children: dict[int, subprocess.Popen[bytes]] = {}


def rootfs_path(opts: LabOptions) -> Path:
    """Final location of the root filesystem for ``opts.suite``."""
    return opts.cache_dir / f"rootfs-{opts.suite}"


def _stamp_ok(root: Path, suite: str) -> bool:
    try:
        data = json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(data, dict)
        and data.get("layout") == ROOTFS_LAYOUT
        and data.get("suite") == suite
        and set(PACKAGES) <= set(data.get("packages", []))
    )


def check_prerequisites() -> None:
    """Raise LabError unless we are root and have chroot (and debootstrap)."""
    if os.geteuid() != 0:
        raise LabError(
            "the rootfs lab engine must run as root (it builds a debootstrap tree "
            "and starts Asterisk with chroot): run it as root, or use --engine docker"
        )
    if shutil.which("chroot") is None:
        raise LabError("chroot is not on PATH: install coreutils")


def _check_debootstrap() -> str:
    exe = shutil.which("debootstrap")
    if exe is None:
        raise LabError(
            "debootstrap is not on PATH, so the Asterisk root filesystem cannot be "
            "built: apt-get install debootstrap"
        )
    return exe


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_rootfs(opts: LabOptions, progress: Callable[[str], None]) -> Path:
    """Return the root filesystem for ``opts.suite``, building it when missing.

    The build runs ``debootstrap --variant=minbase`` into a temporary
    directory next to the final one (about 1 minute and 600 MB), writes the
    completion stamp, then renames it into place, so an interrupted build
    never looks complete.
    """
    check_prerequisites()
    root = rootfs_path(opts)
    if _stamp_ok(root, opts.suite):
        prepare_tree(root)
        return root
    debootstrap = _check_debootstrap()
    with _locked(opts.cache_dir / ".build.lock"):
        if _stamp_ok(root, opts.suite):  # built meanwhile by someone else
            prepare_tree(root)
            return root
        tmp = opts.cache_dir / f"rootfs-{opts.suite}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        progress(f"building the Asterisk root filesystem ({opts.suite}) in {root} ...")
        started = time.monotonic()
        _run_debootstrap(debootstrap, opts.suite, tmp, progress)
        prepare_tree(tmp)
        stamp = {
            "layout": ROOTFS_LAYOUT,
            "suite": opts.suite,
            "packages": list(PACKAGES),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
        progress(f"root filesystem ready in {time.monotonic() - started:.0f} s")
    return root


def _run_debootstrap(exe: str, suite: str, target: Path, progress: Callable[[str], None]) -> None:
    cmd = [
        exe,
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        suite,
        str(target),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    seen_steps: set[str] = set()
    recent: list[str] = []
    for raw in proc.stdout:
        line = raw.rstrip()
        recent = [*recent[-19:], line]
        # "I: Retrieving libc6 2.41-1" is step "Retrieving": report each step
        # once (a build has ~15), and every warning or error.
        words = line.split()
        if words and words[0] in ("W:", "E:"):
            progress(f"  debootstrap: {line}")
        elif len(words) > 1 and words[0] == "I:" and words[1] not in seen_steps:
            seen_steps.add(words[1])
            progress(f"  debootstrap: {line}")
    rc = proc.wait()
    if rc != 0:
        raise LabError(
            f"debootstrap {suite} failed (exit {rc}); last output:\n" + "\n".join(recent)
        )


def prepare_tree(root: Path) -> None:
    """Make the tree usable for Asterisk: /etc/hosts and device nodes.

    Without an /etc/hosts naming localhost and this host's name, every call
    stalls about 5 s on name resolution.
    """
    hostname = socket.gethostname()
    hosts = (
        "# written by ari-bridge lab\n"
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{hostname}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    hosts_file = root / "etc" / "hosts"
    try:
        current = hosts_file.read_text()
    except OSError:
        current = ""
    if current != hosts:
        hosts_file.write_text(hosts)
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("random", 1, 8), ("urandom", 1, 9)):
        node = dev / name
        if not node.exists():
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(node, 0o666)


# --- one instance -------------------------------------------------------------


def _instance_paths(opts: LabOptions, root: Path) -> tuple[str, Path]:
    inner = f"{LABS_DIR}/{instance_id(opts.state_dir)}"
    return inner, root / inner.lstrip("/")


def _prune_instances(labs_dir: Path) -> None:
    """Remove instance directories whose state directory no longer exists.

    Each instance directory names its state directory in ``OWNER_NAME``;
    labs started from temporary state directories (tests) leave nothing
    behind once those are gone. A directory whose Asterisk still runs is
    kept.
    """
    if not labs_dir.is_dir():
        return
    for inst in labs_dir.iterdir():
        try:
            owner = Path((inst / OWNER_NAME).read_text().strip())
        except OSError:
            continue
        if owner.exists() or (inst / "run" / "asterisk.ctl").exists():
            continue
        shutil.rmtree(inst, ignore_errors=True)


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except (OSError, IndexError):
        return False
    # A zombie thread-group leader may still have live threads holding ports.
    return fields[0] not in ("Z", "X") or threads > 1


def _is_our_asterisk(pid: int, conf: str) -> bool:
    """True if ``pid`` is an Asterisk started with ``-C conf``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"asterisk") and conf.encode() in argv


def _running_pid(opts: LabOptions) -> tuple[int, dict[str, object]] | None:
    state = load_state(opts.state_dir)
    pid = _read_pid(opts.state_dir)
    if state is None or pid is None or state.get("engine") != "rootfs":
        return None
    conf = str(state.get("asterisk_conf", ""))
    if _alive(pid) and _is_our_asterisk(pid, conf):
        return pid, state
    return None


def status(opts: LabOptions) -> LabInfo | None:
    """LabInfo of the running instance for ``opts.state_dir``, or None."""
    found = _running_pid(opts)
    if found is None:
        return None
    _pid, state = found
    return info_from_state(state, read_password(opts.state_dir) or "")


def up(opts: LabOptions, progress: Callable[[str], None]) -> LabInfo:
    """Start (or return the already running) instance for ``opts``."""
    check_prerequisites()
    existing = status(opts)
    if existing is not None:
        if existing.ari_url.endswith(f":{opts.ari_port}") and existing.sip_port == opts.sip_port:
            return check_same_slots(existing, opts)
        raise LabError(
            f"a lab already runs for {opts.state_dir} on other ports "
            f"({existing.ari_url}, SIP {existing.sip_port}): take it down first"
        )
    config_dir = resolve_config_dir(opts)
    check_ports_free(opts)
    root = ensure_rootfs(opts, progress)

    state_dir = opts.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    inner, host_dir = _instance_paths(opts, root)
    _prune_instances(host_dir.parent)
    for sub in INSTANCE_DIR_KEYS.values():
        (host_dir / sub).mkdir(parents=True, exist_ok=True)
    # ARI recordings (record, speech input) are written under <spool>/recording, which
    # Asterisk does not create: without it every recording fails with ENOENT.
    (host_dir / "spool" / "recording").mkdir(parents=True, exist_ok=True)
    (host_dir / OWNER_NAME).write_text(f"{state_dir.resolve()}\n")
    # Leftovers of an instance that was killed would confuse the new one.
    for stale in (host_dir / "run").iterdir():
        if stale.is_file() or stale.is_socket():
            stale.unlink()
    password = password_for(state_dir)
    render_config(
        config_dir,
        host_dir / "etc",
        lab_overrides(
            ari_port=opts.ari_port,
            sip_port=opts.sip_port,
            rtp_start=opts.rtp_start,
            rtp_end=opts.rtp_end,
            ari_password=password,
            app_name=opts.app_name,
            slots=opts.slots,
            instance_dir=inner,
        ),
    )
    ari_url = f"http://127.0.0.1:{opts.ari_port}"
    creds = write_credentials(state_dir, ari_url=ari_url, password=password, app_name=opts.app_name)
    conf = f"{inner}/etc/asterisk.conf"
    log_file = state_dir / LOG_NAME
    chroot = shutil.which("chroot") or "chroot"
    cmd = [chroot, str(root), ASTERISK, "-f", "-C", conf]
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    progress(f"starting Asterisk (ARI {ari_url}, SIP 127.0.0.1:{opts.sip_port}/udp)")
    with open(log_file, "ab") as log:
        log.write(f"--- {time.strftime('%F %T')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    (state_dir / PID_NAME).write_text(f"{proc.pid}\n")

    def failure(reason: str) -> LabError:
        _stop_pid(proc.pid, conf)
        (state_dir / PID_NAME).unlink(missing_ok=True)
        messages = tail(host_dir / "log" / "messages")
        return LabError(
            f"{reason}.\n--- {log_file} (tail) ---\n{tail(log_file)}"
            + (f"\n--- Asterisk messages log (tail) ---\n{messages}" if messages else "")
        )

    version = wait_for_ari(
        ari_url,
        password,
        deadline_s=START_DEADLINE_S,
        still_running=lambda: proc.poll() is None,
        on_failure=failure,
    )
    progress(f"Asterisk {version} ready (pid {proc.pid}); ARI credentials in {creds}")
    info = LabInfo(
        ari_url=ari_url,
        ari_username=ARI_USERNAME,
        ari_password=password,
        credentials_file=creds,
        sip_host="127.0.0.1",
        sip_port=opts.sip_port,
        pid=proc.pid,
        engine="rootfs",
        asterisk_version=version,
        app_name=opts.app_name,
        slots=opts.slots,
        log_file=log_file,
    )
    save_state(
        state_dir,
        info,
        {
            "rootfs": str(root),
            "instance_dir": inner,
            "asterisk_conf": conf,
            "rtp_start": opts.rtp_start,
            "rtp_end": opts.rtp_end,
        },
    )
    return info


def _stop_pid(pid: int, conf: str) -> bool:
    """SIGTERM ``pid`` (only if it is our Asterisk), SIGKILL after a deadline."""
    if not (_alive(pid) and _is_our_asterisk(pid, conf)):
        return False
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + STOP_DEADLINE_S
    while time.monotonic() < end:
        if not _alive(pid):
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 5.0
        while _alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)
    return True


def down(opts: LabOptions) -> bool:
    """Stop the instance for ``opts.state_dir``; True if something was stopped."""
    found = _running_pid(opts)
    stopped = False
    if found is not None:
        pid, state = found
        stopped = _stop_pid(pid, str(state.get("asterisk_conf", "")))
    (opts.state_dir / PID_NAME).unlink(missing_ok=True)
    return stopped


def cli(opts: LabOptions, command: str, timeout_s: float = 15.0) -> str:
    """Run ``asterisk -rx command`` against the instance; return its output."""
    found = _running_pid(opts)
    if found is None:
        raise LabError(f"no lab Asterisk is running for {opts.state_dir}: run lab up first")
    _pid, state = found
    chroot = shutil.which("chroot") or "chroot"
    conf = str(state["asterisk_conf"])
    cmd = [chroot, str(state["rootfs"]), ASTERISK, "-C", conf, "-rx", command]
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"asterisk -rx {command!r} did not answer within {timeout_s:.0f} s") from exc
    if res.returncode != 0:
        raise LabError(f"asterisk -rx {command!r} failed (exit {res.returncode}): {res.stderr}")
    return res.stdout
