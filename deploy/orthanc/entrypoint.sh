#!/bin/bash
# Write Orthanc's configuration into /tmp from the environment and secret files, then start it.
#   ORTHANC_USERS_FILE (required): a JSON object {"user": "password", ...}, mounted as a secret
#   ORTHANC_HTTP_PORT (8042), ORTHANC_DICOM_PORT (4242), ORTHANC_AET (AEGLE-PACS), ORTHANC_NAME (aegle-pacs),
#   ORTHANC_STABLE_AGE (60 s), ORTHANC_REMOTE_ACCESS (true: clients outside loopback, always with authentication)
#   ORTHANC_POSTGRESQL_HOST (unset: SQLite index in /var/lib/orthanc/db), ORTHANC_POSTGRESQL_PORT (5432),
#   ORTHANC_POSTGRESQL_DATABASE (orthanc), ORTHANC_POSTGRESQL_USERNAME (orthanc), ORTHANC_POSTGRESQL_PASSWORD_FILE,
#   ORTHANC_POSTGRESQL_STORAGE (false: DICOM files stay in /var/lib/orthanc/db, which a cluster must share)
set -euo pipefail
plugins=/usr/share/orthanc/plugins
users=${ORTHANC_USERS_FILE:?ORTHANC_USERS_FILE: a JSON file of users and passwords (authentication is always on)}
[ -s "$users" ] || { echo "aegle-orthanc: $users is missing or empty" >&2; exit 2; }

json_string() {  # a JSON string literal of $1
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

conf=$(mktemp -d /tmp/orthanc.XXXXXX)
plugin_list="\"$plugins/libOrthancDicomWeb.so\""
if [ -n "${ORTHANC_POSTGRESQL_HOST:-}" ]; then
  plugin_list="$plugin_list, \"$plugins/libOrthancPostgreSQLIndex.so\""
  storage=${ORTHANC_POSTGRESQL_STORAGE:-false}
  [ "$storage" != true ] || plugin_list="$plugin_list, \"$plugins/libOrthancPostgreSQLStorage.so\""
  password=""
  [ -z "${ORTHANC_POSTGRESQL_PASSWORD_FILE:-}" ] || password=$(<"$ORTHANC_POSTGRESQL_PASSWORD_FILE")
  cat >"$conf/postgresql.json" <<JSON
{"PostgreSQL": {"EnableIndex": true, "EnableStorage": $storage,
  "Host": $(json_string "$ORTHANC_POSTGRESQL_HOST"), "Port": ${ORTHANC_POSTGRESQL_PORT:-5432},
  "Database": $(json_string "${ORTHANC_POSTGRESQL_DATABASE:-orthanc}"),
  "Username": $(json_string "${ORTHANC_POSTGRESQL_USERNAME:-orthanc}"), "Password": $(json_string "$password"),
  "Lock": false}}
JSON
fi
{ printf '{"RegisteredUsers": '; cat "$users"; printf '}\n'; } >"$conf/users.json"
cat >"$conf/orthanc.json" <<JSON
{
  "Name": $(json_string "${ORTHANC_NAME:-aegle-pacs}"),
  "StorageDirectory": "/var/lib/orthanc/db",
  "IndexDirectory": "/var/lib/orthanc/db",
  "Plugins": [$plugin_list],
  "HttpServerEnabled": true,
  "HttpPort": ${ORTHANC_HTTP_PORT:-8042},
  "RemoteAccessAllowed": ${ORTHANC_REMOTE_ACCESS:-true},
  "AuthenticationEnabled": true,
  "DicomServerEnabled": true,
  "DicomAet": $(json_string "${ORTHANC_AET:-AEGLE-PACS}"),
  "DicomPort": ${ORTHANC_DICOM_PORT:-4242},
  "DicomModalities": {},
  "OrthancPeers": {},
  "DicomAlwaysAllowEcho": true,
  "DicomAlwaysAllowStore": false,
  "DicomAlwaysAllowFind": false,
  "DicomAlwaysAllowGet": false,
  "DicomAlwaysAllowMove": false,
  "ExecuteLuaEnabled": false,
  "RestApiWriteToFileSystemEnabled": false,
  "DeidentifyLogs": true,
  "StableAge": ${ORTHANC_STABLE_AGE:-60},
  "HttpThreadsCount": 8,
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": false, "Servers": {}}
}
JSON
chmod 0600 "$conf"/*.json
exec /usr/sbin/Orthanc "$@" "$conf"
