#!/bin/sh
# Starts Mosquitto with the dynamic security plugin. On the first start (no plugin file yet) it
# makes the plugin's administrator, which is the gateway's bridge: MQTT_ADMIN_USER (default
# "gateway") with MQTT_ADMIN_PASSWORD. The bridge then writes every device, role and ACL itself.
#
#   start.sh         initialise if needed, then run the broker
#   start.sh init    initialise if needed, and stop there
set -eu
config="${DYNSEC_FILE:-/mosquitto/data/dynamic-security.json}"
if [ ! -f "$config" ]; then
    if [ -z "${MQTT_ADMIN_PASSWORD:-}" ]; then
        echo "MQTT_ADMIN_PASSWORD is not set: it is the bridge's password on the broker" >&2
        exit 1
    fi
    mosquitto_ctrl dynsec init "$config" "${MQTT_ADMIN_USER:-gateway}" "$MQTT_ADMIN_PASSWORD" >/dev/null
    # The broker drops root and runs as its own user, which must be able to rewrite the file.
    chown mosquitto:mosquitto "$config" 2>/dev/null || true
    chmod 600 "$config"
    echo "dynamic security initialised: administrator ${MQTT_ADMIN_USER:-gateway}"
fi
[ "${1:-}" = init ] && exit 0
exec mosquitto -c "${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}"
