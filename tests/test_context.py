"""Sensor context: the fixed vector, its mask and freshness, and the live cache."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from core.context import (
    CONTEXT_FIELDS,
    CONTEXT_SIZE,
    ContextCache,
    SensorContext,
    context_from_series,
    series_from_samples,
)
from core.vitals import Sample, to_ms

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def sample(code: str, seconds: float, value: float, device: str = "mon-1", patient: str = "enc-1") -> Sample:
    return Sample(patient, "ward-1", device, code, to_ms(T0 + timedelta(seconds=seconds)), value, "m")


def field(ctx: SensorContext, name: str) -> float:
    return float(ctx.vector[CONTEXT_FIELDS.index(name)])


def test_empty_context_is_all_missing_not_an_error() -> None:
    ctx = ContextCache().context("nobody", T0)
    assert ctx.vector.shape == (CONTEXT_SIZE,)
    assert ctx.vector.dtype == np.float32
    assert not ctx.vector.any()
    assert ctx.levels["heart_rate"] is None


def test_levels_normalisation_mask_and_freshness() -> None:
    samples = [sample("8867-4", s, v) for s, v in [(0, 80), (10, 100), (20, 90)]]
    samples.append(sample("59408-5", 30, 93))
    ctx = context_from_series("enc-1", series_from_samples(samples), to_ms(T0 + timedelta(seconds=60)),
                              window_s=300, tau_s=60)
    assert ctx.levels["heart_rate"] == 90  # median
    assert field(ctx, "z_heart_rate") == pytest.approx((90 - 75) / 15)
    assert field(ctx, "z_spo2") == pytest.approx((93 - 97) / 2)
    assert field(ctx, "mask_heart_rate") == 1 and field(ctx, "mask_temperature") == 0
    assert field(ctx, "fresh_heart_rate") == pytest.approx(math.exp(-40 / 60), rel=1e-5)
    assert field(ctx, "fresh_spo2") == pytest.approx(math.exp(-30 / 60), rel=1e-5)
    assert field(ctx, "completeness") == pytest.approx(2 / 7)
    assert ctx.ages_s["heart_rate"] == 40


def test_window_is_causal_and_bounded() -> None:
    samples = [sample("8867-4", 0, 60), sample("8867-4", 400, 120), sample("8867-4", 1000, 200)]
    series = series_from_samples(samples)
    at = to_ms(T0 + timedelta(seconds=500))
    ctx = context_from_series("enc-1", series, at, window_s=300)
    assert ctx.levels["heart_rate"] == 120  # the sample at 0 s is too old, the one at 1000 s is in the future
    assert context_from_series("enc-1", series, to_ms(T0 + timedelta(seconds=2000))).levels["heart_rate"] is None


def test_motion_uses_peak_and_z_is_clipped() -> None:
    samples = [sample("motion-rms", s, 0.1, "wear-1") for s in range(8)]
    samples += [sample("motion-rms", 8, 50.0, "wear-1"), sample("motion-rms", 9, 50.0, "wear-1")]
    ctx = context_from_series("enc-1", series_from_samples(samples), to_ms(T0 + timedelta(seconds=10)))
    assert ctx.levels["motion"] == 50.0  # the 90th percentile sees the burst; a median (0.1) would not
    assert field(ctx, "z_motion") == 5.0  # clipped


def test_cache_orders_late_samples_and_ignores_redelivery() -> None:
    cache = ContextCache(window_s=300, keep_s=10**9)
    assert cache.add([sample("8867-4", 20, 100), sample("8867-4", 0, 60)]) == {"enc-1"}
    assert cache.add([sample("8867-4", 20, 100)]) == set()  # exact redelivery
    cache.add([sample("8867-4", 10, 70)])  # late
    ctx = cache.context("enc-1", T0 + timedelta(seconds=30))
    assert ctx.levels["heart_rate"] == 70
    assert ctx.ages_s["heart_rate"] == 10
    assert cache.site_of("enc-1") == "ward-1"


def test_accelerometer_axes_are_not_context_channels() -> None:
    cache = ContextCache()
    assert cache.add([sample("accel-x", 0, 1.0, "wear-1")]) == set()


def test_dict_round_trip_and_layout_check() -> None:
    cache = ContextCache(keep_s=10**9)
    cache.add([sample("8867-4", 0, 80), sample("8310-5", 0, 38.2)])
    ctx = cache.context("enc-1", T0 + timedelta(seconds=5))
    back = SensorContext.from_dict(ctx.to_dict())
    np.testing.assert_allclose(back.vector, ctx.vector, atol=1e-6)
    assert back.at == ctx.at and back.levels == ctx.levels
    bad = ctx.to_dict() | {"fields": ["z_heart_rate"]}
    with pytest.raises(ValueError, match="layout"):
        SensorContext.from_dict(bad)


def test_one_json_form_with_or_without_the_patient_and_the_vector() -> None:
    cache = ContextCache(keep_s=10**9)
    cache.add([sample("8867-4", 0, 80), sample("8310-5", 0, 38.2)])
    ctx = cache.context("enc-1", T0 + timedelta(seconds=5))
    full = ctx.to_dict()
    assert list(full) == ["patient_id", "at", "window_s", "completeness", "levels", "ages_s", "fields", "vector"]
    assert (full["patient_id"], full["at"], full["completeness"]) == ("enc-1", "2026-11-21T12:00:05Z", 0.2857)
    assert full["fields"] == list(CONTEXT_FIELDS) and full["vector"] == [round(float(v), 6) for v in ctx.vector]
    assert ctx.to_dict(patient=False) == {k: v for k, v in full.items() if k != "patient_id"}
    assert ctx.to_dict(patient=False, vector=False) == {k: v for k, v in full.items()
                                                        if k not in ("patient_id", "fields", "vector")}  # fmt: skip
    json.dumps(full, allow_nan=False)  # plain JSON
