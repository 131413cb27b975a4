"""Local lab: a real Asterisk 22 on this host for development and tests.

Two engines run the same shipped configuration (``asterisk-config/``):

* ``rootfs`` (default): Debian's Asterisk packages in a debootstrap tree
  built once under ``LabOptions.cache_dir``, started with ``chroot``; needs
  root and debootstrap. Several instances (different ports and state
  directories) run side by side from one tree.
* ``docker``: the image from ``docker/asterisk.Dockerfile`` via the Python
  ``docker`` SDK; needs a reachable Docker engine.

Example::

    info = lab_up(LabOptions(state_dir=Path("/var/tmp/ari-bridge-dev")))
    print(info.ari_url, info.credentials_file)   # the password stays in the file
    lab_down(LabOptions(state_dir=Path("/var/tmp/ari-bridge-dev")))
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.lab._model import LabError, LabInfo, LabOptions, instance_id

__all__ = [
    "ENGINES",
    "LabError",
    "LabInfo",
    "LabOptions",
    "asterisk_cli",
    "instance_id",
    "lab_down",
    "lab_status",
    "lab_up",
]

#: Engine names accepted in ``LabOptions.engine``.
ENGINES = ("rootfs", "docker")


def _check_engine(opts: LabOptions) -> str:
    if opts.engine not in ENGINES:
        raise LabError(f"unknown lab engine {opts.engine!r}: use one of {', '.join(ENGINES)}")
    return opts.engine


def lab_up(opts: LabOptions, progress: Callable[[str], None] = print) -> LabInfo:
    """Start the lab Asterisk for ``opts`` and wait until ARI answers.

    Idempotent: when the instance for ``opts.state_dir`` already runs on the
    same ports, its info is returned. The first rootfs start builds the root
    filesystem (about 1 minute, reported through ``progress``); later starts
    take about 4 s. ARI credentials are written to ``state_dir/ari.env``
    (mode 0600); the password is generated once per state directory.

    Raises LabError with a readable message on any failure (not root, no
    debootstrap, port in use, no Docker engine, Asterisk not answering
    within 30 s -- with the tail of its log).
    """
    if _check_engine(opts) == "docker":
        from bridge.lab import docker_engine

        return docker_engine.up(opts, progress)
    from bridge.lab import rootfs

    return rootfs.up(opts, progress)


def lab_down(opts: LabOptions) -> bool:
    """Stop the lab for ``opts.state_dir``; True if it stopped something.

    The rootfs engine signals exactly the PID in the state directory's PID
    file, after checking that it is the Asterisk started for this instance
    (SIGTERM, then SIGKILL after 10 s).
    """
    if _check_engine(opts) == "docker":
        from bridge.lab import docker_engine

        return docker_engine.down(opts)
    from bridge.lab import rootfs

    return rootfs.down(opts)


def lab_status(opts: LabOptions) -> LabInfo | None:
    """Info about the running lab for ``opts.state_dir``, or None when down."""
    if _check_engine(opts) == "docker":
        from bridge.lab import docker_engine

        return docker_engine.status(opts)
    from bridge.lab import rootfs

    return rootfs.status(opts)


def asterisk_cli(opts: LabOptions, command: str) -> str:
    """Run an Asterisk CLI command (``asterisk -rx``) in the running lab.

    Returns the command's output; raises LabError when the lab is down.
    """
    if _check_engine(opts) == "docker":
        from bridge.lab import docker_engine

        return docker_engine.cli(opts, command)
    from bridge.lab import rootfs

    return rootfs.cli(opts, command)
