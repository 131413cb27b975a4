#!/bin/sh
# Entrypoint of the ari-bridge Asterisk image.
#
# 1. Copies the configuration from /usr/local/share/ari-bridge/asterisk-config
#    (baked into the image; compose mounts ../asterisk-config there so edits
#    apply on restart) into /etc/asterisk.
# 2. Sets the ARI password from ARI_PASSWORD (and the Stasis application name
#    from ARI_APP, the number of cluster slots from ARI_SLOTS, the ARI bind address and port from ARI_BIND_ADDRESS and ARI_PORT,
#    the SIP UDP transport's address:port from SIP_BIND, the RTP port range from
#    RTP_START and RTP_END) when given.
# 3. Runs the command (Asterisk in the foreground).
set -eu

src=/usr/local/share/ari-bridge/asterisk-config
etc=/etc/asterisk

# set_key FILE SECTION KEY VALUE: rewrite "KEY = ..." inside [SECTION].
set_key() {
    tmp="$1.tmp"
    SECTION="$2" KEY="$3" VALUE="$4" awk '
        /^[ \t]*\[/ { s = $0; sub(/^[ \t]*\[/, "", s); sub(/\].*$/, "", s); sect = s }
        sect == ENVIRON["SECTION"] && $0 ~ "^[ \t]*" ENVIRON["KEY"] "[ \t]*=" && !done {
            print ENVIRON["KEY"] " = " ENVIRON["VALUE"]; done = 1; next
        }
        { print }
    ' "$1" > "$tmp"
    cat "$tmp" > "$1"
    rm -f "$tmp"
}

if [ -d "$src" ]; then
    cp -f "$src"/*.conf "$etc"/
fi

if [ -n "${ARI_PASSWORD:-}" ]; then
    set_key "$etc/ari.conf" ari-bridge password_format plain
    set_key "$etc/ari.conf" ari-bridge password "$ARI_PASSWORD"
elif grep -q '^password = change-me$' "$etc/ari.conf"; then
    echo "asterisk-entrypoint: ARI_PASSWORD is not set; ari.conf keeps its placeholder password" >&2
fi
if [ -n "${ARI_APP:-}" ]; then
    set_key "$etc/extensions.conf" globals ARI_APP "$ARI_APP"
fi
if [ -n "${ARI_SLOTS:-}" ]; then
    set_key "$etc/extensions.conf" globals ARI_SLOTS "$ARI_SLOTS"
fi
if [ -n "${ARI_BIND_ADDRESS:-}" ]; then
    set_key "$etc/http.conf" general bindaddr "$ARI_BIND_ADDRESS"
fi
if [ -n "${ARI_PORT:-}" ]; then
    set_key "$etc/http.conf" general bindport "$ARI_PORT"
fi
if [ -n "${SIP_BIND:-}" ]; then
    set_key "$etc/pjsip.conf" transport-udp bind "$SIP_BIND"
fi
if [ -n "${RTP_START:-}" ]; then
    set_key "$etc/rtp.conf" general rtpstart "$RTP_START"
fi
if [ -n "${RTP_END:-}" ]; then
    set_key "$etc/rtp.conf" general rtpend "$RTP_END"
fi

chown -R asterisk:asterisk "$etc"
chmod 0640 "$etc/ari.conf"

exec "$@"
