"""An InfluxDB-protocol store: InfluxDB 2.x/3.x, or VictoriaMetrics speaking the InfluxDB write protocol.

Writes go through ``influxdb-client`` (synchronous write API) as line protocol::

    vitals,code=8867-4,device_id=mon-12,patient_id=enc-0042,site=ward-3 value=72.0 1795301651123

(measurement ``vitals``; tags ``code``, ``device_id``, ``patient_id``, ``site``, sorted as InfluxDB prefers; one
float field ``value``; millisecond timestamps). A point's identity there is its series plus timestamp, so a
re-written sample overwrites itself instead of adding a row (on VictoriaMetrics this needs
``-dedup.minScrapeInterval=1ms``). ``site`` is a tag, so it is part of the series there (one device's samples
always carry the same site). ``message_id`` is not stored on these backends: reads return ``""`` for it.

Reads use either Flux (``read_api="flux"``, InfluxDB 2.x) or the VictoriaMetrics export API
(``read_api="victoriametrics"``), which names the series ``vitals_value`` and keeps the tags as labels.
Known VictoriaMetrics limits: points outside ``-retentionPeriod`` (default one month) or more than two days in
the future are dropped by the server while the write is still answered with 204.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx
import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS

from core import Sample
from server.store.base import StoreUnavailable, VitalsStore, sort_key_query, sort_key_recent

MEASUREMENT = "vitals"
FIELD = "value"
VM_METRIC = f"{MEASUREMENT}_{FIELD}"
# Lines per HTTP request: keeps a request well under server body limits; a failed chunk fails the whole write,
# which is safe to repeat because writes are idempotent.
WRITE_CHUNK = 10_000
# Upper bound for "everything from since_ms on": far enough to include device clocks running ahead.
_FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

_TAG_ESCAPE = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def escape_tag(value: str) -> str:
    """A tag value escaped for line protocol (backslash, comma, equals sign, space; control characters)."""
    return value.translate(_TAG_ESCAPE)


def line_protocol(samples: Iterable[Sample]) -> list[str]:
    """One line-protocol line per sample (tags with an empty value are left out, as InfluxDB requires)."""
    prefixes: dict[tuple[str, str, str, str], str] = {}
    lines = []
    for s in samples:
        series = (s.code, s.device_id, s.patient_id, s.site)
        prefix = prefixes.get(series)
        if prefix is None:
            tags = "".join(
                f",{key}={escape_tag(val)}"
                for key, val in zip(("code", "device_id", "patient_id", "site"), series, strict=True)
                if val
            )
            prefix = prefixes[series] = f"{MEASUREMENT}{tags} {FIELD}="
        value = float(s.value)
        if not math.isfinite(value):
            raise ValueError(f"cannot store non-finite value {value!r} for {s.patient_id}/{s.code} at {s.t_ms}")
        lines.append(f"{prefix}{value!r} {int(s.t_ms)}")
    return lines


def vm_time(ms: int) -> str:
    """A millisecond instant as VictoriaMetrics' ``start``/``end`` parameter (both are inclusive).

    VictoriaMetrics 1.79 reads it as float seconds and keeps ``int64(secs * 1e3)``, truncating. Plain ``S.mmm``
    is exact for instants before 2038 (2**31 s) but lands a millisecond early for about a quarter of those after;
    RFC 3339 goes through ``UnixNano() / 1e9`` and is a millisecond early for about one instant in seven. Half a
    millisecond more (``S.mmm5``) always truncates to exactly ``ms``.
    """
    ms = max(int(ms), 0)
    return f"{ms // 1000}.{ms % 1000:03d}5"


def vm_string(value: str) -> str:
    """A MetricsQL/PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def flux_string(value: str) -> str:
    """A Flux double-quoted string literal (escapes backslash, quote, control characters and ``${``)."""
    for raw, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("${", "\\${")):
        value = value.replace(raw, escaped)
    return f'"{value}"'


def flux_time(ms: int) -> str:
    """A Flux time literal (RFC 3339, millisecond precision, UTC)."""
    moment = _EPOCH + timedelta(milliseconds=int(ms))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


class InfluxStore(VitalsStore):
    """Vitals on an InfluxDB-protocol server.

    ``timeout_s`` bounds every HTTP request; connection errors, timeouts and error statuses raise
    :class:`StoreUnavailable`. With ``read_api="victoriametrics"`` the token (if any) is also sent to the
    export API as ``Authorization: Token <token>``.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        org: str = "aegle",
        bucket: str = "aegle",
        read_api: Literal["flux", "victoriametrics"] = "flux",
        timeout_s: float = 10.0,
    ) -> None:
        if read_api not in ("flux", "victoriametrics"):
            raise ValueError(f"unknown read_api {read_api!r}")
        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self.read_api = read_api
        self.timeout_s = timeout_s
        # influxdb-client wants a token string; VictoriaMetrics ignores it unless it is behind an auth proxy.
        self._client = InfluxDBClient(url=self.url, token=token or "", org=org, timeout=int(timeout_s * 1000))
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        headers = {"Authorization": f"Token {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    # -- writing ---------------------------------------------------------------------------------------------

    def write(self, samples: Sequence[Sample]) -> None:
        """Write ``samples``; returns once the server has answered 2xx for every chunk."""
        if not samples:
            return
        lines = line_protocol(samples)
        for start in range(0, len(lines), WRITE_CHUNK):
            body = "\n".join(lines[start : start + WRITE_CHUNK]).encode()
            try:
                self._write_api.write(bucket=self.bucket, org=self.org, record=body, write_precision=WritePrecision.MS)
            except (InfluxDBError, urllib3.exceptions.HTTPError, OSError) as exc:
                raise StoreUnavailable(f"write to {self.url} failed: {_describe(exc)}") from exc

    # -- reading ---------------------------------------------------------------------------------------------

    def query(self, patient_id: str, start_ms: int, end_ms: int, codes: Collection[str] | None = None) -> list[Sample]:
        """One patient's samples in ``[start_ms, end_ms]``, sorted by ``(t_ms, code)``; ``message_id`` is ``""``."""
        code_list = None if codes is None else sorted(set(codes))
        if code_list == [] or end_ms < start_ms:
            return []
        if self.read_api == "victoriametrics":
            selectors = (
                [{"patient_id": patient_id}]
                if code_list is None
                else [{"patient_id": patient_id, "code": code} for code in code_list]
            )
            samples = self._vm_export(selectors, start_ms, end_ms)
        else:
            samples = self._flux(start_ms, end_ms + 1, patient_id, code_list)
        return sorted(samples, key=sort_key_query)

    def recent(self, since_ms: int) -> list[Sample]:
        """Every patient's samples with ``t_ms >= since_ms``, sorted by ``t_ms``; ``message_id`` is ``""``."""
        if self.read_api == "victoriametrics":
            samples = self._vm_export([{}], since_ms, _FAR_FUTURE_MS)
        else:
            samples = self._flux(since_ms, _FAR_FUTURE_MS, None, None)
        return sorted(samples, key=sort_key_recent)

    def _vm_export(self, selectors: list[dict[str, str]], start_ms: int, end_ms: int) -> list[Sample]:
        """Raw points from VictoriaMetrics ``/api/v1/export`` (several ``match[]`` selectors are OR-ed)."""
        matches = [
            "{" + ",".join([f"__name__={vm_string(VM_METRIC)}"] + [f"{k}={vm_string(v)}" for k, v in sel.items()]) + "}"
            for sel in selectors
        ]
        params = [("match[]", m) for m in matches] + [("start", vm_time(start_ms)), ("end", vm_time(end_ms))]
        samples: list[Sample] = []
        try:
            with self._http.stream("GET", "/api/v1/export", params=params) as response:
                if response.status_code != 200:
                    response.read()
                    raise StoreUnavailable(
                        f"export from {self.url} answered {response.status_code}: {response.text[:300]}"
                    )
                for line in response.iter_lines():
                    if not line:
                        continue
                    series = json.loads(line)
                    labels = series["metric"]
                    pid, site = labels.get("patient_id", ""), labels.get("site", "")
                    device, code = labels.get("device_id", ""), labels.get("code", "")
                    for t_ms, value in zip(series["timestamps"], series["values"], strict=True):
                        samples.append(Sample(pid, site, device, code, int(t_ms), float(value), ""))
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"export from {self.url} failed: {_describe(exc)}") from exc
        return samples

    def flux_query(self, start_ms: int, stop_ms: int, patient_id: str | None, codes: list[str] | None) -> str:
        """The Flux query for points with ``start_ms <= t < stop_ms`` (Flux ``range`` excludes ``stop``)."""
        parts = [
            f"from(bucket: {flux_string(self.bucket)})",
            f"  |> range(start: {flux_time(start_ms)}, stop: {flux_time(stop_ms)})",
            f'  |> filter(fn: (r) => r._measurement == "{MEASUREMENT}" and r._field == "{FIELD}")',
        ]
        if patient_id is not None:
            parts.append(f"  |> filter(fn: (r) => r.patient_id == {flux_string(patient_id)})")
        if codes:
            parts.append("  |> filter(fn: (r) => " + " or ".join(f"r.code == {flux_string(c)}" for c in codes) + ")")
        parts.append('  |> keep(columns: ["_time", "_value", "patient_id", "site", "device_id", "code"])')
        return "\n".join(parts)

    def _flux(self, start_ms: int, stop_ms: int, patient_id: str | None, codes: list[str] | None) -> list[Sample]:
        """Points read with Flux through ``influxdb-client``'s query API.

        Untested here: no InfluxDB 2.x/3.x server can run in this environment; written against the
        influxdb-client 1.x documentation (``QueryApi.query_stream`` yielding ``FluxRecord``).
        """
        query = self.flux_query(start_ms, stop_ms, patient_id, codes)
        samples: list[Sample] = []
        try:
            for record in self._client.query_api().query_stream(query, org=self.org):
                values = record.values
                t_ms = (record.get_time() - _EPOCH) // _MS
                samples.append(
                    Sample(
                        str(values.get("patient_id") or ""),
                        str(values.get("site") or ""),
                        str(values.get("device_id") or ""),
                        str(values.get("code") or ""),
                        int(t_ms),
                        float(record.get_value()),
                        "",
                    )
                )
        except (InfluxDBError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"flux query on {self.url} failed: {_describe(exc)}") from exc
        return samples

    # -- housekeeping ----------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Make every acknowledged write searchable now (VictoriaMetrics ``/internal/force_flush``).

        VictoriaMetrics otherwise makes new points searchable within about a second. A no-op for Flux.
        """
        if self.read_api != "victoriametrics":
            return
        try:
            response = self._http.get("/internal/force_flush")
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"force_flush on {self.url} failed: {_describe(exc)}") from exc
        if response.status_code >= 300:
            raise StoreUnavailable(f"force_flush on {self.url} answered {response.status_code}")

    def ping(self) -> bool:
        """True when the server answers its health endpoint (VictoriaMetrics ``/health``, InfluxDB ``/ping``)."""
        if self.read_api == "victoriametrics":
            try:
                return self._http.get("/health").status_code == 200
            except httpx.HTTPError:
                return False
        return bool(self._client.ping())

    def close(self) -> None:
        """Close both HTTP clients."""
        self._http.close()
        self._write_api.close()
        self._client.close()


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    text = f"{type(exc).__name__}: {exc}".strip()
    return f"HTTP {status}: {text[:300]}" if status else text[:300]
