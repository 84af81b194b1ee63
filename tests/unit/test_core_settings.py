"""The operator's settings: every GRAFT_* variable, read once, with errors that name it."""

from __future__ import annotations

import pytest

from graft.core.settings import ConfigError, Settings


def test_config_defaults() -> None:
    cfg = Settings.from_env({})
    assert cfg.image == cfg.trainer_image == "ghcr.io/graft-dev/graft:0.1.0"
    assert cfg.artifacts_uri == "pvc://graft-artifacts"
    assert cfg.artifacts_claim() == "graft-artifacts"
    assert cfg.pod_annotations == {}
    assert (cfg.dataset_min_examples, cfg.dataset_max_examples, cfg.dataset_max_bytes) == (
        3,
        3_000_000,
        1 << 30,
    )


def test_config_from_env() -> None:
    cfg = Settings.from_env(
        {
            "GRAFT_IMAGE": "img:1",
            "GRAFT_JOB_POD_ANNOTATIONS": '{"sidecar.istio.io/inject": "false"}',
            "GRAFT_ARTIFACTS_URI": "file:///srv/artifacts/",
            "GRAFT_DATASET_MAX_BYTES": "1000",
            "GRAFT_DATASET_MAX_EXAMPLES": "10",
        }
    )
    assert (cfg.image, cfg.trainer_image) == ("img:1", "img:1")
    assert cfg.pod_annotations == {"sidecar.istio.io/inject": "false"}
    assert cfg.artifacts_uri == "file:///srv/artifacts"
    assert cfg.artifacts_claim() is None
    assert (cfg.dataset_max_bytes, cfg.dataset_max_examples) == (1000, 10)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GRAFT_JOB_POD_ANNOTATIONS": "{nope"}, "GRAFT_JOB_POD_ANNOTATIONS is not JSON"),
        ({"GRAFT_JOB_POD_ANNOTATIONS": '{"a": 1}'}, "must be a JSON object of strings"),
        ({"GRAFT_ARTIFACTS_URI": "s3://bucket/x"}, "pvc://<claim>[/<path>] or file:///<path>"),
        ({"GRAFT_ARTIFACTS_URI": "file://relative"}, "GRAFT_ARTIFACTS_URI='file://relative'"),
        ({"GRAFT_DATASET_MAX_BYTES": "1G"}, "GRAFT_DATASET_MAX_BYTES='1G' is not an integer"),
        ({"GRAFT_DATASET_MAX_EXAMPLES": "0"}, "must be positive"),
        ({"GRAFT_RESYNC_SECONDS": "soon"}, "GRAFT_RESYNC_SECONDS='soon' is not a number"),
        ({"GRAFT_RESYNC_SECONDS": "0"}, "GRAFT_RESYNC_SECONDS='0' must be positive"),
        ({"GRAFT_WORKERS": "-1"}, "GRAFT_WORKERS='-1' must be positive"),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "setting", "value"),
    [
        ({}, "vllm_image", "vllm/vllm-openai:v0.11.0"),
        ({"GRAFT_VLLM_IMAGE": "r/vllm:1"}, "vllm_image", "r/vllm:1"),
        ({"GRAFT_REFERENCE_IMAGE": "r/graft:dev"}, "reference_image", "r/graft:dev"),
        # Jobs run the Reference image unless GRAFT_IMAGE says otherwise.
        ({"GRAFT_REFERENCE_IMAGE": "r/graft:dev"}, "image", "r/graft:dev"),
        ({"GRAFT_REFERENCE_IMAGE": "r/graft:dev"}, "trainer_image", "r/graft:dev"),
        ({}, "resync_seconds", 300.0),
        ({"GRAFT_RESYNC_SECONDS": "2.5"}, "resync_seconds", 2.5),
        ({}, "workers", 8),
        ({"GRAFT_WORKERS": "3"}, "workers", 3),
    ],
)
def test_operator_settings_from_env(env: dict[str, str], setting: str, value: object) -> None:
    assert getattr(Settings.from_env(env), setting) == value


def test_engine_images() -> None:
    cfg = Settings(reference_image="r/graft:dev", vllm_image="r/vllm:1")
    assert (cfg.engine_image("Reference"), cfg.engine_image("VLLM")) == ("r/graft:dev", "r/vllm:1")


def test_autoscaler_settings() -> None:
    cfg = Settings.from_env({})
    assert (cfg.autoscaler_interval, cfg.min_scale_to_zero_window) == (5.0, 300.0)
    assert cfg.gateway_metrics == ()
    cfg = Settings.from_env(
        {
            "GRAFT_AUTOSCALER_INTERVAL": "0.5",
            "GRAFT_MIN_SCALE_TO_ZERO_WINDOW": "10",
            "GRAFT_GATEWAY_METRICS": "http://127.0.0.1:9100/metrics, http://gw:9100/metrics,",
        }
    )
    assert (cfg.autoscaler_interval, cfg.min_scale_to_zero_window) == (0.5, 10.0)
    assert cfg.gateway_metrics == ("http://127.0.0.1:9100/metrics", "http://gw:9100/metrics")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GRAFT_AUTOSCALER_INTERVAL": "0"}, "GRAFT_AUTOSCALER_INTERVAL='0' must be positive"),
        ({"GRAFT_MIN_SCALE_TO_ZERO_WINDOW": "5m"}, "GRAFT_MIN_SCALE_TO_ZERO_WINDOW='5m' is not a"),
        ({"GRAFT_GATEWAY_METRICS": "https://gw:9100/metrics"}, "GRAFT_GATEWAY_METRICS"),
        ({"GRAFT_GATEWAY_METRICS": "gw:9100"}, "not an http://"),
        ({"GRAFT_GATEWAY_METRICS": "http://gw:port/metrics"}, "not an http://"),
    ],
)
def test_autoscaler_setting_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
