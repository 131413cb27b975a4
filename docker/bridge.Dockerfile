# ari-bridge itself. Build from the repository root:
#   docker build -f docker/bridge.Dockerfile -t ari-bridge .
FROM python:3.11-slim

# Media tools used by the bridge: text to speech (espeak-ng) and audio
# conversion to 8 kHz WAV for Asterisk (sox, ffmpeg).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      espeak-ng sox ffmpeg \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The build context is the repository root; .dockerignore keeps the
# virtualenv, tests and git history out.
COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src

RUN useradd --system --home-dir /var/lib/ari-bridge --create-home ari-bridge
USER ari-bridge
WORKDIR /var/lib/ari-bridge

# Mount the configuration at /etc/ari-bridge/config.yaml; ARI credentials
# may come from ARI_BRIDGE_ARI__* environment variables.
ENTRYPOINT ["ari-bridge"]
CMD ["serve", "--config", "/etc/ari-bridge/config.yaml"]
