"""The Kubernetes manifests, rendered by a real kubectl (kustomize v5) and validated offline,
and cross-checked against the code they deploy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.autoscaler.kube import CONTROLLER_RULES, GATEWAY_RULES
from gateway.config import ServerConfig
from gateway.metrics import Metrics
from gateway.ops_port import PATHS as OPS_PATHS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.35.0"
BIN = Path(sys.executable).parent
RENDERED = ["base", "overlays/cpu", "overlays/gpu"]


def render(path: str) -> list[dict[str, Any]]:
    output = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(K8S / path)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (doc for doc in docs if doc["kind"] == kind)


def strict_validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", RENDERED)
def test_every_rendered_object_is_valid(path: str) -> None:
    docs = render(path)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ConfigMap", "Role", "PodDisruptionBudget"}
    for doc in docs:
        strict_validate(doc)  # raises ValidationError or SchemaNotFoundError


def test_the_validator_rejects_a_broken_manifest() -> None:
    doc = yaml.safe_load((ROOT / "tests" / "fixtures" / "broken-deployment.yaml").read_text())
    with pytest.raises(kubernetes_validate.ValidationError):
        strict_validate(doc)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        strict_validate({"apiVersion": "extensions/v1beta1", "kind": "Deployment", "metadata": {"name": "old"}})


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("path", RENDERED)
def test_selectors_match_what_they_select(path: str) -> None:
    docs = render(path)
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind(docs, "Deployment")]
    for deployment in by_kind(docs, "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert _labels_match(selector, deployment["spec"]["template"]["metadata"]["labels"]), deployment["metadata"]
        for constraint in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert constraint["labelSelector"]["matchLabels"] == selector
    for service in by_kind(docs, "Service"):
        assert sum(_labels_match(service["spec"]["selector"], labels) for labels in pods) == 1, service["metadata"]
    for kind, key in (("PodDisruptionBudget", "selector"), ("NetworkPolicy", "podSelector")):
        for doc in by_kind(docs, kind):
            assert any(_labels_match(doc["spec"][key]["matchLabels"], labels) for labels in pods), doc["metadata"]
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["name"] in {r["metadata"]["name"] for r in by_kind(docs, "Role")}
        for subject in binding["subjects"]:
            assert subject["name"] in {s["metadata"]["name"] for s in by_kind(docs, "ServiceAccount")}


def _config(docs: list[dict[str, Any]]) -> ServerConfig:
    from gateway.config import load_server_config

    configmap = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "batchgate-config")
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "batchgate-k8s-config.yaml"
    path.write_text(configmap["data"]["batchgate.yaml"])
    return load_server_config(path, environ={})


def _container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    spec = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == deployment)
    container: dict[str, Any] = spec["spec"]["template"]["spec"]["containers"][0]
    return container


def test_ports_probes_and_config_match_the_gateway() -> None:
    from gateway.rest.routes import RestAPI

    docs = render("base")
    config = _config(docs)  # the real loader accepts it
    paths = {route.path for route in RestAPI.routes(RestAPI.__new__(RestAPI))}
    gateway = _container(docs, "batchgate-gateway")
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": config.http.port, "grpc": config.grpc.port, "metrics": config.metrics.port}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert gateway[probe]["httpGet"]["path"] in paths & OPS_PATHS
        assert gateway[probe]["httpGet"]["port"] == "metrics"  # not behind clients in the HTTP accept queue
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    worker = _container(docs, "batchgate-workers")
    listen = worker["args"][worker["args"].index("--listen") + 1]
    worker_port = worker["ports"][0]["containerPort"]
    assert listen.endswith(f":{worker_port}")
    assert all(worker[p]["grpc"]["port"] == worker_port for p in ("startupProbe", "livenessProbe", "readinessProbe"))
    discovery = config.pools["default"].discovery
    assert discovery is not None and discovery.port == worker_port
    headless = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == discovery.service)
    assert headless["spec"]["clusterIP"] == "None"
    scaled = config.autoscaler.kubernetes["default"].deployment
    assert scaled in {d["metadata"]["name"] for d in by_kind(docs, "Deployment")}


def test_roles_grant_exactly_the_calls_the_code_makes() -> None:
    docs = render("base")
    roles = {r["metadata"]["name"]: r["rules"] for r in by_kind(docs, "Role")}

    def granted(rules: list[dict[str, Any]]) -> list[tuple[str, str, tuple[str, ...]]]:
        return sorted(
            (group, resource, tuple(sorted(rule["verbs"])))
            for rule in rules
            for group in rule["apiGroups"]
            for resource in rule["resources"]
        )

    assert granted(roles["batchgate-controller"]) == sorted((g, r, tuple(sorted(v))) for g, r, v in CONTROLLER_RULES)
    assert granted(roles["batchgate-gateway"]) == sorted((g, r, tuple(sorted(v))) for g, r, v in GATEWAY_RULES)


def _exported_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    exported = _exported_names()
    text = (K8S / "monitoring" / "grafana-dashboard.json").read_text()
    text += (K8S / "monitoring" / "prometheusrule.yaml").read_text()
    used = set(re.findall(r"\bbatchgate_[a-z_]+", text))
    assert used, "no metric found"
    assert used <= exported, sorted(used - exported)
    rules = yaml.safe_load((K8S / "monitoring" / "prometheusrule.yaml").read_text())
    alerts = [r for group in rules["spec"]["groups"] for r in group["rules"] if "alert" in r]
    assert {"BatchgateErrorBudgetFastBurn", "BatchgateLatencyBudgetFastBurn"} <= {a["alert"] for a in alerts}


def _tool(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: make test installs it")
        pytest.skip(f"{path} not installed (make test installs it)")
    return path


def test_checkov_finds_nothing_unexplained(tmp_path: Path) -> None:
    checkov = _tool(ROOT / ".tools" / "checkov" / "bin" / "checkov")
    for path in RENDERED[1:]:
        rendered = tmp_path / f"{path.replace('/', '-')}.yaml"
        rendered.write_text(yaml.safe_dump_all(render(path)))
        result = subprocess.run(
            [str(checkov), "-f", str(rendered), "--framework", "kubernetes", "--skip-download", "--compact", "--quiet"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:]
    result = subprocess.run(
        [
            str(checkov),
            "-f",
            str(ROOT / "Dockerfile"),
            "--framework",
            "dockerfile",
            "--skip-download",
            "--compact",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_dockerfile_passes_hadolint_and_installs_what_make_installs() -> None:
    result = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    # No Docker engine runs here: the image recipe is trusted from lint and from mirroring make.
    make_extras = re.search(r"pip install --quiet -e '\.\[([a-z,]+)\]'\n\t@touch \$@\n\n\$\(VENV\)/\.test", makefile)
    assert make_extras is not None and make_extras.group(1) == "cpu,demo"  # what make run installs
    image_extras = re.search(r'pip install --no-cache-dir "\.\[\$\{VARIANT\},([a-z,]+)\]"', dockerfile)
    assert image_extras is not None and image_extras.group(1) == "demo"
    assert "ARG VARIANT=cpu" in dockerfile and "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile


def _promtool_and_rules() -> tuple[str, dict[str, Any]]:
    """promtool (Debian's prometheus package, which make test installs) and the PrometheusRule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: make test installs Debian's prometheus package")
        pytest.skip("promtool not installed (make test installs it)")
    return promtool, yaml.safe_load((K8S / "monitoring" / "prometheusrule.yaml").read_text())


def test_alert_and_recording_rules_pass_promtool(tmp_path: Path) -> None:
    """Prometheus's own checker parses every expression and template (promtool comes with
    Debian's prometheus package, which make test installs)."""
    promtool, rule = _promtool_and_rules()
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _alert_fires(tmp_path: Path, series: list[dict[str, str]], alert: str, expected: dict[str, Any]) -> None:
    """promtool's rule tests on the PrometheusRule: ``series`` one sample a minute, and at 16
    minutes ``alert`` firing exactly once, with ``expected``'s labels and annotations."""
    promtool, rule = _promtool_and_rules()
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": "16m", "alertname": alert, "exp_alerts": [expected]}],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_connection_alert_follows_each_gateways_own_cap(tmp_path: Path) -> None:
    """900 of a 1024 cap fires, 900 of a raised 4096 cap does not."""
    series = [
        ("batchgate_open_connections", "a", "900+0x20"),
        ("batchgate_max_connections", "a", "1024+0x20"),
        ("batchgate_open_connections", "b", "900+0x20"),
        ("batchgate_max_connections", "b", "4096+0x20"),
    ]
    expected = {
        "exp_labels": {"instance": "a", "front": "http", "severity": "ticket"},
        "exp_annotations": {
            "summary": "The http front of a holds over 80% of its connection cap",
            "description": "Over 80% of limits.max_connections for 10 minutes (87.89% now); past the cap new "
            "connections get 503 (HTTP) or GOAWAY (gRPC). Add gateways or raise the cap.",
        },
    }
    lines = [
        {"series": f'{name}{{instance="{instance}",front="http"}}', "values": values}
        for name, instance, values in series
    ]
    _alert_fires(tmp_path, lines, "BatchgateConnectionsNearCap", expected)


def test_the_loop_lag_alert_fires_for_a_lagging_gateway_only(tmp_path: Path) -> None:
    """5% of a gateway's loop samples over 50 ms fires; all under 10 ms does not."""
    # Cumulative samples per minute at each bucket bound (20 a second: the 50 ms default).
    bounds = ["0.01", "0.05", "0.1", "+Inf"]
    per_minute = {"a": dict(zip(bounds, [1000, 1140, 1200, 1200], strict=True)), "b": dict.fromkeys(bounds, 1200)}
    name = "batchgate_event_loop_lag_seconds_bucket"
    series = [
        {"series": f'{name}{{instance="{instance}",le="{le}"}}', "values": f"0+{count}x20"}
        for instance, buckets in per_minute.items()
        for le, count in buckets.items()
    ]
    expected = {
        "exp_labels": {"instance": "a", "severity": "ticket"},
        "exp_annotations": {
            "summary": "The event loop of a runs due work over 50 ms late",
            "description": "Its p99 event-loop lag has been over 50 ms for 10 minutes (90ms now), and every "
            "request waits that long on top of its model. Add gateways, give each a CPU its workers do not "
            "share, or move large JSON bodies off the loop (http.json_offload_bytes).",
        },
    }
    _alert_fires(tmp_path, series, "BatchgateEventLoopLagging", expected)
