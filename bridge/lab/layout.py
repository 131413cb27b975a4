"""What the lab's root filesystem holds and where, shared by both engines: the rootfs engine
builds and runs the tree, the docker engine turns the same tree into a base image.

A leaf module (standard library only), so that ``rootfs`` and ``docker_engine`` can both use
these names without importing each other or the ``bridge.lab`` package.
"""

from __future__ import annotations

#: Debian packages installed into the root filesystem.
PACKAGES = (
    "asterisk",
    "asterisk-modules",
    "asterisk-core-sounds-en-wav",
    "asterisk-moh-opsound-wav",
    "asterisk-mp3",
)
#: Bump when the tree's layout or package set changes, to force a rebuild.
ROOTFS_LAYOUT = 1
#: Completion stamp written into the tree before it is renamed into place.
STAMP_NAME = ".ari-bridge-rootfs.json"
#: Parent of the instance directories, as seen inside the tree.
LABS_DIR = "/srv/ari-bridge-labs"
