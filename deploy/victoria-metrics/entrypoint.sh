#!/bin/bash
# Start VictoriaMetrics with the flags Aegle's store relies on (the same as aegle/localservices.py):
# deduplication makes a redelivered vitals message count once; no retention cut-off; no read latency offset.
#   VM_PORT (8428), VM_BIND_ADDRESS (127.0.0.1; empty: every interface); extra flags as arguments.
set -euo pipefail
exec /usr/bin/victoria-metrics \
  "-httpListenAddr=${VM_BIND_ADDRESS-127.0.0.1}:${VM_PORT:-8428}" \
  -storageDataPath=/var/lib/victoria-metrics \
  -search.latencyOffset=0s \
  -dedup.minScrapeInterval=1ms \
  -retentionPeriod=100y \
  -loggerLevel=WARN \
  "$@"
