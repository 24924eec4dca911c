#!/bin/bash
# Start Mosquitto with Aegle's policy, authentication on and the dynamic-security plugin; config in /tmp.
#   MQTT_PORT (1883), MQTT_BIND_ADDRESS (127.0.0.1; empty: every interface of the container's network),
#   MQTT_TLS_CERT / MQTT_TLS_KEY (files: the listener speaks TLS), MOSQUITTO_DYNSEC_FILE
#   (/mosquitto/data/dynamic-security.json: written by deploy/stack/make_secrets.py from core/accounts.py).
set -euo pipefail
data=/mosquitto/data
dynsec=${MOSQUITTO_DYNSEC_FILE:-$data/dynamic-security.json}
if [ ! -s "$dynsec" ]; then
  echo "aegle-mosquitto: $dynsec is missing: no accounts, and no anonymous broker (deploy/stack/make_secrets.py writes it)" >&2
  exit 2
fi
port=${MQTT_PORT:-1883}
bind=${MQTT_BIND_ADDRESS-127.0.0.1}
conf=/tmp/mosquitto.conf
{
  cat /etc/aegle/mosquitto-policy.conf
  echo "listener $port${bind:+ $bind}"
  if [ -n "${MQTT_TLS_CERT:-}" ]; then
    echo "certfile $MQTT_TLS_CERT"
    echo "keyfile ${MQTT_TLS_KEY:?MQTT_TLS_KEY is needed with MQTT_TLS_CERT}"
  fi
  echo "log_dest stderr"
  echo "persistence_location $data/"
  echo "allow_anonymous false"
  echo "plugin /usr/lib/mosquitto_dynamic_security.so"
  echo "plugin_opt_config_file $dynsec"
} >"$conf"
exec /usr/sbin/mosquitto -c "$conf" "$@"
