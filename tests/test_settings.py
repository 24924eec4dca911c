"""One settings object: defaults, TOML file, environment over file, secrets from files."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings


def test_file_then_environment_then_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    config = tmp_path / "aegle.toml"
    config.write_text(
        f'[mqtt]\nport = 1884\nusername = "aegle-ingest"\npassword_file = "{secret}"\n'
        '[store]\nbackend = "influx"\nread_api = "victoriametrics"\n[ingest]\nbatch_size = 500\n'
    )
    monkeypatch.setenv("AEGLE_CONFIG", str(config))
    monkeypatch.setenv("AEGLE_INGEST__BATCH_SIZE", "700")
    settings = Settings()
    assert settings.mqtt.port == 1884
    assert settings.mqtt.secret() == "s3cret"
    assert settings.store.backend == "influx" and settings.store.read_api == "victoriametrics"
    assert settings.ingest.batch_size == 700  # the environment wins over the file
    assert Settings(log_level="DEBUG").log_level == "DEBUG"
    assert "s3cret" not in repr(settings)


def test_defaults_are_embedded_and_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AEGLE_CONFIG", raising=False)
    settings = Settings()
    assert settings.store.backend == "sqlite"
    assert settings.mqtt.host == "127.0.0.1"
    monkeypatch.setenv("AEGLE_INGEST__RECEIVE_MAXIMUM", "70000")  # above MQTT's 65 535
    with pytest.raises(ValueError, match="receive_maximum"):
        Settings()
    monkeypatch.setenv("AEGLE_CONFIG", "/nonexistent/aegle.toml")
    monkeypatch.delenv("AEGLE_INGEST__RECEIVE_MAXIMUM")
    with pytest.raises(FileNotFoundError, match="AEGLE_CONFIG"):
        Settings()
