#!/bin/sh
# apt-install PACKAGE...: install the Debian packages that are not installed yet, then drop
# apt's lists. When everything is already there (a base image made from the lab's debootstrap
# tree), nothing is downloaded, so the build also works without network access.
#
# Debian testing's Release file is sometimes served past its Valid-Until date; apt refuses
# that by default, hence Check-Valid-Until=false (signatures are still checked).
set -eu
missing=""
for pkg in "$@"; do
    if ! dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $pkg"
    fi
done
if [ -z "$missing" ]; then
    echo "apt-install: already installed: $*"
    exit 0
fi
echo "apt-install: installing$missing"
apt-get -o Acquire::Check-Valid-Until=false update
# shellcheck disable=SC2086  # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
apt-get clean
rm -rf /var/lib/apt/lists/*
