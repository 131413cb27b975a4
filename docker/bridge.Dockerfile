# ari-bridge itself. Build from the repository root:
#   docker build --network host -f docker/bridge.Dockerfile -t ari-bridge .
# Without access to an image registry, build on a local base image (see docs/lab.md):
#   docker build --network host --build-arg BASE_IMAGE=ari-bridge-base:testing ...
ARG BASE_IMAGE=debian:testing-slim
FROM ${BASE_IMAGE} AS base

# Python, and the media tools used by the bridge: text to speech (espeak-ng), audio
# conversion to 8 kHz WAV for Asterisk (sox, ffmpeg), and sox's MP3 support (libsox-fmt-mp3)
# for mp3 recordings.
COPY docker/apt-install.sh /usr/local/sbin/apt-install
RUN sh /usr/local/sbin/apt-install \
      python3 python3-venv ca-certificates espeak-ng sox libsox-fmt-mp3 ffmpeg

# The bridge in its own virtual environment (Debian's Python is externally managed), built in
# a stage of its own: the source and docker/build-extra/ (a pip.conf or a CA bundle for pip,
# when this network needs them) never reach the final image.
FROM base AS build
# A compiler for the packages without a wheel for this Python (pocketsphinx, on a Python newer
# than its wheels); only this stage has it.
RUN sh /usr/local/sbin/apt-install gcc libc6-dev make python3-dev
# pip reads docker/build-extra/pip.conf and trusts docker/build-extra/ca.crt when present.
COPY docker/build-extra/ /build-extra/
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The dependencies first, from pyproject.toml alone (with a placeholder package), so this
# layer (pocketsphinx's compile included) is rebuilt only when they change.
COPY pyproject.toml /src/
RUN if [ -f /build-extra/pip.conf ]; then export PIP_CONFIG_FILE=/build-extra/pip.conf; fi \
 && if [ -f /build-extra/ca.crt ]; then export PIP_CERT=/build-extra/ca.crt; fi \
 && mkdir -p /src/bridge && touch /src/bridge/__init__.py /src/README.md \
 && python3 -m venv /opt/ari-bridge \
 && /opt/ari-bridge/bin/pip install /src \
 && rm -rf /src
# Then the bridge itself. The build context is the repository root; .dockerignore keeps the
# virtualenv, tests and git history out.
COPY . /src
RUN if [ -f /build-extra/pip.conf ]; then export PIP_CONFIG_FILE=/build-extra/pip.conf; fi \
 && if [ -f /build-extra/ca.crt ]; then export PIP_CERT=/build-extra/ca.crt; fi \
 && /opt/ari-bridge/bin/pip install --no-deps --force-reinstall /src

FROM base
COPY --from=build /opt/ari-bridge /opt/ari-bridge
ENV PATH=/opt/ari-bridge/bin:$PATH
COPY docker/bridge-healthcheck.py /usr/local/bin/ari-bridge-healthcheck

# The state directory holds the call store, the agent store and generated media; recordings
# have their own directory (compose mounts a named volume on each; a new volume takes this
# ownership).
RUN useradd --system --home-dir /var/lib/ari-bridge --create-home ari-bridge \
 && install -d -o ari-bridge -g ari-bridge -m 0750 \
      /var/lib/ari-bridge/media /var/lib/ari-bridge/recordings \
 && chmod 0755 /usr/local/bin/ari-bridge-healthcheck
USER ari-bridge
WORKDIR /var/lib/ari-bridge
VOLUME ["/var/lib/ari-bridge", "/var/lib/ari-bridge/recordings", "/var/lib/ari-bridge/media"]

# Healthy while GET /readyz answers 200: ARI connected, the stores writable, not draining.
# The check reads http.host/http.port from the configuration (and ARI_BRIDGE_HTTP__*); python3
# is the virtual environment's (PATH), which has PyYAML.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "/usr/local/bin/ari-bridge-healthcheck"]

# Mount the configuration at /etc/ari-bridge/config.yaml; ARI credentials
# may come from ARI_BRIDGE_ARI__* environment variables.
ENTRYPOINT ["ari-bridge"]
CMD ["serve", "--config", "/etc/ari-bridge/config.yaml"]
