# Redis for ari-bridge's agent store (Exotel Connect state management), on the same base as
# the other images. Build from the repository root:
#   docker build --network host -f docker/redis.Dockerfile -t ari-bridge-redis .
ARG BASE_IMAGE=debian:testing-slim
FROM ${BASE_IMAGE}

COPY docker/apt-install.sh /usr/local/sbin/apt-install
RUN sh /usr/local/sbin/apt-install redis-server \
 && install -d -o redis -g redis -m 0750 /var/lib/redis

# Loopback only (host networking), persistence on (agent leases and sticky agents survive a
# restart). The password comes from REDIS_PASSWORD and is handed over on standard input (no quote
# characters in it), so it is not on the command line.
ENV REDIS_PORT=6379
USER redis
WORKDIR /var/lib/redis
VOLUME ["/var/lib/redis"]
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
  CMD REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG
# exec: redis-server is PID 1 and gets SIGTERM itself (it saves and exits at once).
CMD ["sh", "-c", "exec redis-server - --bind 127.0.0.1 --port \"$REDIS_PORT\" --dir /var/lib/redis --appendonly yes --protected-mode yes <<EOF\nrequirepass \"${REDIS_PASSWORD:?set REDIS_PASSWORD}\"\nEOF\n"]
