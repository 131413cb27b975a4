# Asterisk 22 for ari-bridge, configured with the repository's asterisk-config/.
# Build from the repository root:
#   docker build --network host -f docker/asterisk.Dockerfile -t ari-bridge-asterisk .
# Without access to an image registry, build on a local base image (see docs/lab.md):
#   docker build --network host --build-arg BASE_IMAGE=ari-bridge-base:testing ...
# Keep the package list in step with bridge/lab/rootfs.py (PACKAGES).
ARG BASE_IMAGE=debian:testing-slim
FROM ${BASE_IMAGE}

# Packages already in the base (the lab's debootstrap tree carries them) are not fetched
# again, so a build on that base needs no network. Debian testing's Release file can be
# served past its Valid-Until date, which apt refuses by default.
COPY docker/apt-install.sh /usr/local/sbin/apt-install
RUN sh /usr/local/sbin/apt-install \
      asterisk asterisk-modules asterisk-core-sounds-en-wav \
      asterisk-moh-opsound-wav asterisk-mp3

# Only our configuration: drop the stock sample files.
RUN rm -rf /etc/asterisk && mkdir -p /etc/asterisk /usr/local/share/ari-bridge
COPY asterisk-config/ /usr/local/share/ari-bridge/asterisk-config/
COPY asterisk-config/ /etc/asterisk/
COPY docker/asterisk-entrypoint.sh /usr/local/bin/asterisk-entrypoint
# ARI recordings (record, speech input) are written to spool/recording, which the package
# does not create.
RUN chmod 0755 /usr/local/bin/asterisk-entrypoint \
 && mkdir -p /var/spool/asterisk/recording \
 && chown -R asterisk:asterisk /etc/asterisk /var/spool/asterisk/recording

# /etc/hosts: Docker writes one naming localhost and the container's host
# name (with network_mode: host, the host's own), which Asterisk needs to
# avoid a ~5 s name-resolution stall per call; nothing to do here.

# ARI (loopback only, see http.conf), SIP, RTP (rtp.conf).
EXPOSE 8088/tcp 5060/udp 10000-20000/udp

# Healthy once Asterisk has fully booted and ARI is enabled, asked over its own CLI socket.
# Not the bridge's /readyz: that depends on Asterisk, so Asterisk's health must not depend on
# the bridge (compose starts the bridge once Asterisk is healthy), and ARI itself would need
# the password and an HTTP client in this image.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
  CMD asterisk -rx 'core waitfullybooted' | grep -q 'fully booted' \
   && asterisk -rx 'ari show status' | grep -q 'Enabled: Yes'

# The entrypoint runs as root to install the configuration; Asterisk itself drops to the
# asterisk user (-U/-G).
ENTRYPOINT ["/usr/local/bin/asterisk-entrypoint"]
CMD ["/usr/sbin/asterisk", "-f", "-U", "asterisk", "-G", "asterisk"]
