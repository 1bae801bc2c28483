from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_server_config
from gateway.model_config import load_model_config
from gateway.repository import check_references, scan_repository
from tests.helpers import write_model


def test_defaults_need_no_file() -> None:
    config = load_server_config(None, environ={})
    assert config.http.port == 8000 and config.pools["default"].replicas == 2


def test_env_overrides_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "batchgate.yaml"
    path.write_text("http: {port: 9000}\nmodel_repository: repo\n")
    config = load_server_config(path, {"http": {"host": "0.0.0.0"}}, environ={"BATCHGATE_HTTP__PORT": "9100"})
    assert (config.http.host, config.http.port) == ("0.0.0.0", 9100)
    assert config.model_repository == tmp_path / "repo"


def test_wrong_value_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "batchgate.yaml"
    path.write_text("pools: {default: {replicas: -1}}\n")
    with pytest.raises(ConfigError, match=r"pools\.default\.replicas: Input should be greater than or equal to 0"):
        load_server_config(path, environ={})
    path.write_text("htp: {port: 1}\n")
    with pytest.raises(ConfigError, match="htp: Extra inputs are not permitted"):
        load_server_config(path, environ={})


def test_model_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("batching: {max_batch_size: 4, preferred_batch_sizes: [8]}\n")
    with pytest.raises(ConfigError, match="preferred batch size 8"):
        load_model_config(path)
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_model_config(path)


def test_repository_versions_pools_and_fallback_cycles(tmp_path: Path) -> None:
    for version in (1, 2, 3):
        write_model(tmp_path, "a", b"x", version=version)
    (tmp_path / "a" / "config.yaml").write_text("version_policy: {latest: 2}\nfallback: {model: b}\n")
    write_model(tmp_path, "b", b"x", {"fallback": {"model": "a"}})
    models = scan_repository(tmp_path)
    assert [v.version for v in models["a"].versions] == ["2", "3"]
    from gateway.config import PoolConfig

    with pytest.raises(ConfigError, match="loops: a -> b -> a"):
        check_references(models, {"default": PoolConfig()})
    (tmp_path / "b" / "config.yaml").write_text("pool: gpu\n")
    with pytest.raises(ConfigError, match="'gpu' is not one of"):
        check_references(scan_repository(tmp_path), {"default": PoolConfig()})


def test_empty_or_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        scan_repository(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no model folders"):
        scan_repository(tmp_path)
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match="no version folder"):
        scan_repository(tmp_path)


def test_a_cpu_list_is_checked_when_the_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "batchgate.yaml"
    path.write_text("cpus: '0'\npools: {default: {cpus: '1-3,5'}}\n")
    config = load_server_config(path, environ={})
    assert (config.cpus, config.pools["default"].cpus) == ("0", "1-3,5")
    path.write_text("pools: {default: {cpus: '2-1'}}\n")
    with pytest.raises(ConfigError, match=r"pools\.default\.cpus: Value error, '2-1': the range 2-1 runs backwards"):
        load_server_config(path, environ={})


def test_thread_isolation_is_for_local_pools(tmp_path: Path) -> None:
    path = tmp_path / "batchgate.yaml"
    path.write_text("pools: {default: {isolation: thread}}\n")
    assert load_server_config(path, environ={}).pools["default"].isolation == "thread"
    assert load_server_config(None, environ={}).pools["default"].isolation == "process"
    path.write_text("pools: {default: {isolation: thread, endpoints: ['127.0.0.1:9000']}}\n")
    with pytest.raises(ConfigError, match=r"pools\.default: Value error, isolation 'thread' applies to local replicas"):
        load_server_config(path, environ={})
    path.write_text("pools: {default: {isolation: fork}}\n")
    with pytest.raises(ConfigError, match=r"pools\.default\.isolation: Input should be 'process' or 'thread'"):
        load_server_config(path, environ={})
