"""One settings object for every Aegle process: ``AEGLE_*`` environment variables, an optional TOML file.

Precedence: constructor arguments, then environment (``AEGLE_MQTT__PORT=1884``; nested sections use ``__``),
then the file named by ``AEGLE_CONFIG`` (TOML), then defaults. Secrets are read from the environment or from
files (``*_file`` fields), never from the repository.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from core.dicom_chunks import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES
from core.vitals import ID_PATTERN


def read_secret(value: SecretStr | None, path: Path | None) -> str | None:
    """A secret given directly or as the path of a file that holds it (trailing newline stripped)."""
    if value is not None:
        return value.get_secret_value()
    if path is not None:
        return path.read_text().strip()
    return None


class MqttSettings(BaseModel):
    """Broker connection."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: bool = False
    keepalive: int = 30
    # Publishers (core.mqtt.MqttPublisher): seconds after which a QoS 1 message the broker answered 0x10 "No
    # matching subscribers" (and dropped) is published again, until a subscriber takes it; None: it counts as
    # acknowledged. Set it for devices: after a broker restart Mosquitto 2.0.11 has no ingest subscription until
    # the workers are back (docs/vitals.md, *Delivery guarantees*).
    unmatched_retry_s: float | None = Field(default=None, gt=0)

    def secret(self) -> str | None:
        return read_secret(self.password, self.password_file)


class StoreSettings(BaseModel):
    """Time-series store: embedded SQLite by default, or the InfluxDB protocol."""

    backend: Literal["sqlite", "influx"] = "sqlite"
    sqlite_path: Path = Path("var/aegle-vitals.sqlite")
    url: str = "http://127.0.0.1:8086"
    token: SecretStr | None = None
    token_file: Path | None = None
    org: str = "aegle"
    bucket: str = "aegle"
    # How reads are made on an InfluxDB-protocol store: Flux (InfluxDB 2.x) or the Prometheus-style
    # HTTP API of VictoriaMetrics.
    read_api: Literal["flux", "victoriametrics"] = "flux"

    def secret(self) -> str | None:
        return read_secret(self.token, self.token_file)


class IngestSettings(BaseModel):
    """Ingest worker."""

    worker_id: str = "ingest-1"
    share_group: str = "aegle-ingest"
    site: str = "+"
    receive_maximum: int = Field(default=4000, ge=1, le=65535)
    batch_size: int = Field(default=2000, ge=1)
    batch_interval_s: float = Field(default=0.05, gt=0)
    session_expiry_s: int = 7 * 24 * 3600
    spool_path: Path = Path("var/ingest-spool.sqlite")
    spool_max_samples: int = 5_000_000
    context_publish_interval_s: float = 1.0
    metrics_port: int | None = None
    # Seconds between the worker's retained status messages (aegle/v1/{site}/status/ingest/{worker_id}).
    status_interval_s: float = Field(default=5.0, gt=0)


class ContextSettings(BaseModel):
    """Sensor context window."""

    window_s: float = 300.0
    freshness_tau_s: float = 60.0


class ApiSettings(BaseModel):
    """The HTTP inference service (FastAPI)."""

    model_config = ConfigDict(hide_input_in_errors=True)  # a refused database_url is not repeated in errors

    host: str = "127.0.0.1"
    port: int = 8400
    # API tokens are stored hashed (never in clear) in this SQLite file; ``aegle token create`` adds them.
    tokens_path: Path = Path("var/aegle-tokens.sqlite")
    # Append-only audit log of every read or write of patient data.
    audit_path: Path = Path("var/aegle-audit.sqlite")
    # Tokens are stored as HMAC-SHA256(secret, token). The secret comes from here, or from this file, which is
    # created (mode 0600, 32 random bytes) on first use when neither is set.
    token_secret: SecretStr | None = None
    token_secret_file: Path = Path("var/aegle-token-secret")
    # Series processed through the API (UIDs, counts, model, failures; no patient identifiers).
    studies_path: Path = Path("var/aegle-studies.sqlite")
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=4096 * 4096, ge=1)
    # Seconds a request may wait for room in the inference queue before 503 + Retry-After (0: refuse at once).
    queue_timeout_s: float = Field(default=0.0, ge=0)
    # Readiness probes (broker connect, store ping, PACS DICOMweb query) give up after this many seconds.
    probe_timeout_s: float = Field(default=2.0, gt=0)
    # None: tokens, audit log and study log are the SQLite files above (one replica). A PostgreSQL URL, e.g.
    # postgresql://aegle@db.example:5432/aegle or postgresql://aegle@/aegle?host=/var/run/postgresql (unix
    # socket), keeps all three there, shared by every replica (which must then share the token secret too).
    # Never the password in the URL: database_password or database_password_file.
    database_url: str | None = None
    database_password: SecretStr | None = None
    database_password_file: Path | None = None

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("database_url must be a postgresql:// URL")
        if parts.password is not None or "password=" in parts.query:
            raise ValueError("database_url must not hold the password: use database_password(_file)")
        return value

    def database_secret(self) -> str | None:
        """The database password, if any (none: e.g. peer authentication over the unix socket)."""
        return read_secret(self.database_password, self.database_password_file)


#: Registry names of the models the service serves by default (training writes under the same names).
DEFAULT_ENHANCER = "enhancer-x2"
DEFAULT_QUALITY_ENHANCER = "enhancer-x2-quality"
DEFAULT_TRIAGE = "triage-classifier"

#: The input paths that choose their enhancer: ``live`` is ``POST /api/v1/enhance`` (plain images); ``study`` is
#: every DICOM path (STOW-RS, DICOM from edge nodes over MQTT, the Orthanc watch mode, ``POST /api/v1/enhance/dicom``).
EnhancePath = Literal["live", "study"]
ENHANCE_PATHS: tuple[EnhancePath, ...] = get_args(EnhancePath)
#: The enhancer's two operating points: ``fast`` (setting ``enhancer``), ``quality`` (setting ``quality_enhancer``).
OperatingPoint = Literal["fast", "quality"]


class ServedModel(BaseModel):
    """A model the service serves: its registry name and the version its card must carry (None: any version)."""

    name: str = Field(min_length=1)
    version: str | None = None


class ServedEnhancer(ServedModel):
    """The fast enhancer, served by default (a partial setting, e.g. only the version, keeps the other default)."""

    name: str = Field(default=DEFAULT_ENHANCER, min_length=1)
    version: str | None = "3.1.0"


class ServedQualityEnhancer(ServedModel):
    """The quality enhancer, the study path's operating point by default."""

    name: str = Field(default=DEFAULT_QUALITY_ENHANCER, min_length=1)
    version: str | None = "1.0.0"


class ServedTriage(ServedModel):
    """The triage classifier served by default."""

    name: str = Field(default=DEFAULT_TRIAGE, min_length=1)
    version: str | None = "0.1.0"


class InferenceSettings(BaseModel):
    """The served models, which enhancer each input path uses, backends and micro-batching."""

    # The shipped models' names and versions: a weights directory holding another version is refused at start
    # (named in /readyz and `aegle models`) rather than served silently. AEGLE_INFERENCE__ENHANCER__VERSION=...
    # `enhancer` is the fast operating point (the live path's), `quality_enhancer` the quality one (the PACS path's).
    enhancer: ServedEnhancer = ServedEnhancer()
    # None: the quality operating point is served by `enhancer` (AEGLE_INFERENCE__STUDY_MODEL=fast does the same
    # through the path setting). AEGLE_INFERENCE__QUALITY_ENHANCER__NAME / __VERSION choose another model.
    quality_enhancer: ServedQualityEnhancer | None = ServedQualityEnhancer()
    triage: ServedTriage = ServedTriage()
    # The operating point each input path uses (see EnhancePath). AEGLE_INFERENCE__STUDY_MODEL=fast|quality
    live_model: OperatingPoint = "fast"
    study_model: OperatingPoint = "quality"
    backend: Literal["auto", "onnxruntime", "torch", "tensorrt"] = "auto"
    weights_dir: Path | None = None  # None: the default weights shipped in gan/weights
    cache_dir: Path = Path("var/model-cache")
    threads: int | None = None
    max_batch: int = Field(default=8, ge=1)
    # Input pixels per batch at most (batches of large images are smaller): bounds the activation memory of one
    # batch. 2 × 256²: a 256² → 512² study runs in pairs; 128² inputs still batch 8.
    max_batch_pixels: int = Field(default=2 * 256 * 256, ge=1)
    # Images with a side over this run through the enhancer in overlapping tiles of this side: the same result,
    # and one model call never holds the activations of more than a tile (a 4096² upload would need ~13 GB).
    tile_size: int = Field(default=512, ge=64)
    max_wait_ms: float = Field(default=5.0, ge=0)
    queue_max: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _one_version_per_model(self) -> InferenceSettings:
        quality = self.quality_enhancer
        if quality is not None and quality.name == self.enhancer.name and quality.version != self.enhancer.version:
            raise ValueError(
                f"enhancer and quality_enhancer name the same model ({quality.name}) with different versions "
                f"({self.enhancer.version} and {quality.version})"
            )
        return self

    def enhancer_role(self, path: EnhancePath) -> Literal["enhancer", "quality_enhancer"]:
        """The setting (``enhancer`` or ``quality_enhancer``) naming the enhancer ``path`` uses: its operating point
        (``live_model``, ``study_model``); ``quality`` is served by ``enhancer`` while ``quality_enhancer`` is unset."""
        point = self.live_model if path == "live" else self.study_model
        return "quality_enhancer" if point == "quality" and self.quality_enhancer is not None else "enhancer"

    def enhancer_for(self, path: EnhancePath) -> ServedModel:
        """The enhancer ``path`` uses (see :meth:`enhancer_role`)."""
        served: ServedModel = getattr(self, self.enhancer_role(path))
        return served


class PacsSettings(BaseModel):
    """The PACS the derived series go to (Orthanc with its DICOMweb plugin, or any DICOMweb server)."""

    dicomweb_url: str | None = None  # e.g. http://127.0.0.1:8042/dicom-web
    orthanc_url: str | None = None  # REST API, for the PACS-side watch mode
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    # ``aegle serve`` runs the PACS-side watch mode (needs ``orthanc_url`` and ``dicomweb_url``).
    watch: bool = False
    poll_interval_s: float = Field(default=1.0, gt=0)
    # Result events of ``aegle serve`` go to aegle/v1/{results_site}/results/{study_uid}.
    results_site: str = Field(default="site-1", pattern=ID_PATTERN)
    # Where the Orthanc watch mode keeps its position in Orthanc's changes feed (and pending retries).
    watch_state_path: Path = Path("var/pacs-watch-state.json")

    def secret(self) -> str | None:
        return read_secret(self.password, self.password_file)


class EdgeSettings(BaseModel):
    """An edge node: where it listens for DICOM, where it keeps its outbox, how it forwards."""

    site: str = "site-1"
    edge_id: str | None = None  # None: the MQTT username (the broker lets an edge publish only under that id)
    outbox_path: Path = Path("var/edge-outbox")
    max_outbox_bytes: int = Field(default=8 * 1024**3, ge=1)
    ae_title: str = Field(default="AEGLE_EDGE", min_length=1, max_length=16)
    dicom_host: str = "127.0.0.1"
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    chunk_size: int = Field(default=DEFAULT_CHUNK_BYTES, ge=1, le=MAX_CHUNK_BYTES)
    window: int = Field(default=32, ge=1, le=65535)
    # Seconds between the node's retained status messages (aegle/v1/{site}/status/edge/{edge_id}).
    status_interval_s: float = Field(default=5.0, gt=0)


class TransferSettings(BaseModel):
    """The DICOM transfer assembler."""

    # ``aegle serve`` runs the assembler and sends what it delivers through the study pipeline.
    enabled: bool = False
    worker_id: str = "dicom-1"
    site: str = "+"
    staging_path: Path = Path("var/dicom-staging")
    max_staging_bytes: int = Field(default=16 * 1024**3, ge=MAX_CHUNK_BYTES)
    max_instance_bytes: int = Field(default=2 * 1024**3, ge=1)
    incomplete_timeout_s: float = Field(default=3600.0, gt=0)
    done_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    receive_maximum: int = Field(default=4, ge=1, le=65535)
    session_expiry_s: int = 7 * 24 * 3600
    sweep_interval_s: float = Field(default=5.0, gt=0)
    # ``aegle serve`` files delivered instances here by series and runs a series through the pipeline once no
    # instance of it has arrived for ``series_quiet_s`` (like Orthanc's StableAge).
    series_path: Path = Path("var/dicom-series")
    series_quiet_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _instance_fits(self) -> TransferSettings:
        if self.max_instance_bytes > self.max_staging_bytes:
            raise ValueError("max_instance_bytes must not exceed max_staging_bytes")
        return self


class DashboardSettings(BaseModel):
    """The browser dashboard ``aegle serve`` mounts at ``/dashboard`` (docs/dashboard.md)."""

    #: Out-of-range limits per context channel, (low, high): a value below low or above high is flagged. Adult
    #: defaults: the NEWS2 bands that score 2 or more (diastolic pressure, not in NEWS2: common monitor alarm
    #: limits; motion, not a clinical sign: movement that blurs an image).
    DEFAULT_LIMITS: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "heart_rate": (41.0, 110.0),
        "spo2": (94.0, None),
        "temperature": (35.1, 39.0),
        "respiratory_rate": (9.0, 20.0),
        "systolic_bp": (101.0, 219.0),
        "diastolic_bp": (40.0, 110.0),
        "motion": (None, 2.0),
    }

    # A login (an API token exchanged for a session cookie) lasts this long; it ends sooner at logout, when its
    # token is revoked and when the service restarts (sessions are kept in memory).
    session_lifetime_s: float = Field(default=8 * 3600.0, gt=0)
    # A channel whose newest sample is older than this is marked stale on the ward view.
    stale_after_s: float = Field(default=30.0, gt=0)
    # The viewer keeps the source and derived frames of the last keep_series enhanced series here (0: none kept;
    # the viewer then reads the derived series from the PACS).
    frames_path: Path = Path("var/dashboard-frames")
    keep_series: int = Field(default=100, ge=0)
    # Limits merged over DEFAULT_LIMITS: a channel not named keeps its default, [null, null] turns its flags off.
    # AEGLE_DASHBOARD__LIMITS='{"heart_rate": [40, 130]}'
    limits: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict, validate_default=True)

    @field_validator("limits")
    @classmethod
    def _merge_limits(
        cls, value: dict[str, tuple[float | None, float | None]]
    ) -> dict[str, tuple[float | None, float | None]]:
        unknown = sorted(set(value) - set(cls.DEFAULT_LIMITS))
        if unknown:
            raise ValueError(f"unknown channels {unknown}; channels: {', '.join(cls.DEFAULT_LIMITS)}")
        for channel, (low, high) in value.items():
            if low is not None and high is not None and low >= high:
                raise ValueError(f"{channel}: low {low} must be below high {high}")
        return cls.DEFAULT_LIMITS | value


class Settings(BaseSettings):
    """Every setting of every Aegle process."""

    # Errors name the setting, never its value (a value may be a secret, e.g. a password put into a URL).
    model_config = SettingsConfigDict(
        env_prefix="AEGLE_", env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True
    )

    mqtt: MqttSettings = MqttSettings()
    store: StoreSettings = StoreSettings()
    ingest: IngestSettings = IngestSettings()
    context: ContextSettings = ContextSettings()
    api: ApiSettings = ApiSettings()
    inference: InferenceSettings = InferenceSettings()
    pacs: PacsSettings = PacsSettings()
    edge: EdgeSettings = EdgeSettings()
    dicom_transfer: TransferSettings = TransferSettings()
    dashboard: DashboardSettings = DashboardSettings()
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        config = os.environ.get("AEGLE_CONFIG")
        if config:
            if not Path(config).is_file():
                raise FileNotFoundError(f"AEGLE_CONFIG={config} does not exist")
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=config),)
        return sources
