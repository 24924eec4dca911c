"""The Kubernetes manifests (k8s/): every overlay renders, validates against the API schemas, is yamllint clean
and passes the deployment policy: probes, requests and limits, non-root, read-only root filesystem, dropped
capabilities, pinned image tags, no Secret with a value, every pod under a NetworkPolicy, and no NetworkPolicy
port that nothing declares. The policy checker is itself tested on deliberately bad objects.

Offline: kubectl kustomize renders locally; kubernetes-validate carries its schemas.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
yamllint_config = pytest.importorskip("yamllint.config")
yamllint_linter = pytest.importorskip("yamllint.linter")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "edge", "scale")
#: The oldest Kubernetes the manifests support, and the newest the installed kubernetes-validate knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
#: Egress to peers outside the namespace that no manifest here declares: cluster DNS, the central broker the
#: edge box bridges to (MQTT over TLS).
EXTERNAL_EGRESS_PORTS = {53, 8883}

Obj = dict[str, Any]


@cache
def render(overlay: str) -> tuple[Obj, ...]:
    """The objects ``kubectl kustomize k8s/overlays/<overlay>`` renders."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with kustomize) is required to render k8s/")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def name(obj: Obj) -> str:
    """Kind/name of an object, for messages."""
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_templates(objs: tuple[Obj, ...] | list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, pod template) of every workload."""
    for obj in objs:
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]


def containers(pod: Obj) -> list[Obj]:
    """Init and app containers of a pod template."""
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set; {} selects everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def declared_ports(objs: tuple[Obj, ...] | list[Obj], labels_match: Any) -> set[int | str]:
    """Ports (numbers and names) that containers of the pods ``labels_match`` accepts declare, and the ports of
    Services selecting those pods."""
    ports: set[int | str] = set()
    for _, pod in pod_templates(objs):
        if not labels_match(pod["metadata"].get("labels", {})):
            continue
        for c in containers(pod):
            for p in c.get("ports", []):
                ports.add(p["containerPort"])
                ports.update([p["name"]] if "name" in p else [])
        for obj in objs:
            if obj["kind"] == "Service" and selects({"matchLabels": obj["spec"].get("selector", {})},
                                                    pod["metadata"].get("labels", {})):  # fmt: skip
                for p in obj["spec"].get("ports", []):
                    ports.update({p["port"], p.get("targetPort", p["port"])})
    return ports


def policy_violations(objs: tuple[Obj, ...] | list[Obj]) -> list[str]:
    """Every breach of the deployment policy in a set of rendered objects (empty: compliant)."""
    problems: list[str] = []
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    for obj, pod in pod_templates(objs):
        spec = pod["spec"]
        pod_sc = spec.get("securityContext", {})
        labels = pod["metadata"].get("labels", {})
        if not any(selects(p["spec"]["podSelector"], labels) for p in policies):
            problems.append(f"{name(obj)}: no NetworkPolicy selects its pods")
        for c in containers(pod):
            where = f"{name(obj)} container {c['name']}"
            image = c.get("image", "")
            tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else "digest"
            if not tag or tag == "latest":
                problems.append(f"{where}: image {image!r} has no pinned tag")
            if c not in spec.get("initContainers", []):
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        problems.append(f"{where}: no {probe}")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in res.get(part, {}):
                        problems.append(f"{where}: no {resource} {part[:-1]}")
            sc = c.get("securityContext", {})
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                problems.append(f"{where}: not runAsNonRoot")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{where}: runs as user 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem not read-only")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation not disabled")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
                problems.append(f"{where}: capabilities not all dropped")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccomp profile not RuntimeDefault")
    for obj in objs:
        if obj["kind"] == "Secret" and (obj.get("data") or obj.get("stringData")):
            problems.append(f"{name(obj)}: a Secret with values is committed")
    for pol in policies:
        problems += _policy_port_problems(objs, pol)
    return problems


def _policy_port_problems(objs: tuple[Obj, ...] | list[Obj], pol: Obj) -> list[str]:
    """Ports a NetworkPolicy opens that no container or Service of the pods it concerns declares."""
    problems: list[str] = []
    spec = pol["spec"]
    own = declared_ports(objs, lambda labels: selects(spec["podSelector"], labels))
    for rule in spec.get("ingress", []):
        for p in rule.get("ports", []):
            if p.get("port") is not None and p["port"] not in own:
                problems.append(f"{name(pol)}: ingress port {p['port']} is declared by none of its pods")
    for rule in spec.get("egress", []):
        peers = [peer["podSelector"] for peer in rule.get("to", [])
                 if "podSelector" in peer and "namespaceSelector" not in peer]  # fmt: skip
        theirs = declared_ports(objs, lambda labels, peers=peers: any(selects(s, labels) for s in peers))
        for p in rule.get("ports", []):
            port = p.get("port")
            if port is None or (not peers and port in EXTERNAL_EGRESS_PORTS):
                continue
            if port not in theirs:
                problems.append(f"{name(pol)}: egress port {port} is declared by none of the peer pods")
    return problems


@cache
def schema_errors(version: str, document: str) -> str | None:
    """kubernetes-validate's strict verdict on one object (JSON text), cached: the overlays share most objects
    and each validation reloads the schema definitions."""
    obj = json.loads(document)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{version} {name(obj)}: {exc.message} at {list(exc.path)}"
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay: str) -> None:
    """Rendered objects validate (strict: no unknown field) for Kubernetes 1.30 and the newest known version."""
    objs = render(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"NetworkPolicy", "Deployment", "Service", "ConfigMap"} <= kinds
    verdicts = [schema_errors(v, json.dumps(o, sort_keys=True)) for v in VERSIONS for o in objs]
    errors = [e for e in verdicts if e]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_meets_the_deployment_policy(overlay: str) -> None:
    """Probes, requests and limits, non-root, read-only root, no capabilities, pinned tags, no Secret values,
    every pod under a NetworkPolicy and no NetworkPolicy port that nothing declares."""
    assert policy_violations(render(overlay)) == []


def test_overlays_hold_what_the_deployment_needs() -> None:
    """Each overlay's shape: which workloads, the GPU settings, the clustered services."""
    def workloads(overlay: str) -> dict[str, Obj]:
        return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] in WORKLOADS}

    cpu = workloads("cpu")
    central = {"aegle-server", "aegle-transfer", "aegle-ingest", "aegle-broker", "aegle-orthanc", "aegle-store"}
    assert central <= set(cpu)
    assert cpu["aegle-server"]["kind"] == "Deployment"
    assert {cpu[n]["kind"] for n in ("aegle-broker", "aegle-orthanc", "aegle-store")} == {"StatefulSet"}
    for n in ("aegle-broker", "aegle-orthanc", "aegle-store", "aegle-ingest", "aegle-transfer"):
        assert cpu[n]["spec"]["volumeClaimTemplates"], n
    server = cpu["aegle-server"]["spec"]["template"]["spec"]["containers"][0]
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Measured peak RSS 962 MB must fit under the memory limit.
    assert parse_memory(server["resources"]["limits"]["memory"]) > 962 * 10**6

    gpu = workloads("gpu")["aegle-server"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["nodeSelector"] and gpu["tolerations"]
    env = {e["name"]: e.get("value") for e in gpu["containers"][0]["env"]}
    assert env["AEGLE_INFERENCE__BACKEND"] == "tensorrt"
    assert any(v.get("persistentVolumeClaim") for v in gpu["volumes"])

    edge = workloads("edge")
    assert set(edge) == {"aegle-edge", "aegle-broker"}

    scale = workloads("scale")
    assert "aegle-store" not in scale and scale["aegle-emqx"]["spec"]["replicas"] >= 3
    assert scale["aegle-orthanc"]["spec"]["replicas"] > 1 and scale["aegle-ingest"]["spec"]["replicas"] > 1
    assert {"aegle-vmstorage", "aegle-vminsert", "aegle-vmselect", "aegle-vmauth"} <= set(scale)

    hpas = {o["metadata"]["name"]: o for o in render("cpu") if o["kind"] == "HorizontalPodAutoscaler"}
    metrics = hpas["aegle-server"]["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Resource", "Pods"}
    assert any(m.get("pods", {}).get("metric", {}).get("name") == "aegle_inference_queue_depth" for m in metrics)
    assert hpas["aegle-ingest"]["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def parse_memory(quantity: str) -> int:
    """Bytes of a Kubernetes memory quantity such as 1536Mi or 2Gi."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def test_manifests_are_yamllint_clean() -> None:
    """Every YAML file under k8s/ passes yamllint with the repository's .yamllint."""
    config = yamllint_config.YamlLintConfig(file=str(ROOT / ".yamllint"))
    problems = []
    files = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))
    assert files
    for path in files:
        for p in yamllint_linter.run(path.read_text(), config, str(path)):
            problems.append(f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.message} ({p.rule})")
    assert not problems, "\n".join(problems)


def test_broker_policy_copy_is_the_one_in_core() -> None:
    """kustomize reads nothing outside k8s/, so the broker policy is copied there: it must not drift."""
    copied = (K8S / "base" / "broker" / "mosquitto-policy.conf").read_text()
    assert copied == (ROOT / "core" / "mosquitto-policy.conf").read_text()


def test_the_policy_checker_catches_each_violation() -> None:
    """The checker on deliberately bad copies of a compliant overlay: each breach is reported."""
    good = [copy.deepcopy(o) for o in render("cpu")]
    assert policy_violations(good) == []

    def breach(change: Any, expected: str) -> None:
        objs = copy.deepcopy(good)
        change(objs)
        found = policy_violations(objs)
        assert any(expected in p for p in found), (expected, found)

    def server(objs: list[Obj]) -> Obj:
        dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "aegle-server")
        container: Obj = dep["spec"]["template"]["spec"]["containers"][0]
        return container

    breach(lambda o: server(o).pop("readinessProbe"), "no readinessProbe")
    breach(lambda o: server(o).pop("livenessProbe"), "no livenessProbe")
    breach(lambda o: server(o)["resources"]["limits"].pop("memory"), "no memory limit")
    breach(lambda o: server(o)["resources"].pop("requests"), "no cpu request")
    breach(lambda o: server(o).update(image="localhost/aegle"), "no pinned tag")
    breach(lambda o: server(o).update(image="localhost/aegle:latest"), "no pinned tag")
    breach(lambda o: server(o)["securityContext"].update(readOnlyRootFilesystem=False), "not read-only")
    breach(lambda o: server(o)["securityContext"].update(runAsNonRoot=False), "not runAsNonRoot")
    breach(lambda o: server(o)["securityContext"].update(allowPrivilegeEscalation=True), "privilege escalation")
    breach(lambda o: server(o)["securityContext"]["capabilities"].update(drop=[]), "capabilities")
    breach(lambda o: server(o)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]), "capabilities")
    def no_seccomp(objs: list[Obj]) -> None:
        server(objs)["securityContext"].pop("seccompProfile")
        dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "aegle-server")
        dep["spec"]["template"]["spec"]["securityContext"].pop("seccompProfile")

    breach(no_seccomp, "seccomp")
    breach(lambda o: o.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "leak"},
                               "stringData": {"password": "hunter2"}}), "a Secret with values")  # fmt: skip
    breach(lambda o: o[:] and [o.remove(p) for p in [x for x in o if x["kind"] == "NetworkPolicy"]],
           "no NetworkPolicy selects")

    def open_undeclared_port(objs: list[Obj]) -> None:
        pol = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "server")
        pol["spec"]["ingress"][0]["ports"].append({"protocol": "TCP", "port": 9999})
        pol["spec"]["egress"][0]["ports"].append({"protocol": "TCP", "port": 8883})

    breach(open_undeclared_port, "ingress port 9999")
    breach(open_undeclared_port, "egress port 8883")
