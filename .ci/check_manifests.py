#!/usr/bin/env python3
"""Checks the rendered Kubernetes manifests (`kubectl kustomize k8s/`) for what the project
promises about every pod (CONTRACT.md §8, docs/deployment.md):

- the "restricted" Pod Security Standard: runAsNonRoot, a non-zero runAsUser,
  allowPrivilegeEscalation false, capabilities drop ALL (and add nothing but
  NET_BIND_SERVICE), seccomp RuntimeDefault, no privileged container, no host namespaces or
  hostPath volumes; plus readOnlyRootFilesystem;
- cpu and memory requests and limits on every container;
- automountServiceAccountToken false;
- the pods that serve HTTP (the API, and the worker on its metrics listener): liveness /health
  and readiness /health/ready; the API also a startup probe;
- api and worker: terminationGracePeriodSeconds above AI_AGENTS_SHUTDOWN_GRACE_SECS;
- the Namespace enforces the restricted standard.

Prints every miss and exits 1 if there is any. Usage: python3 .ci/check_manifests.py [DIR]
(default k8s/ next to this script's directory). Needs kubectl and PyYAML.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
# Components whose pods serve HTTP and must have the HTTP probes.
HTTP_COMPONENTS = {"api", "worker"}
# Components that must outlive AI_AGENTS_SHUTDOWN_GRACE_SECS when stopped.
GRACEFUL_COMPONENTS = {"api", "worker"}
DEFAULT_SHUTDOWN_GRACE_SECS = 25


def render(directory: Path) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def pod_template(obj: dict) -> dict | None:
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return spec.get("template")


def shutdown_grace(objects: list[dict]) -> int:
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            value = (obj.get("data") or {}).get("AI_AGENTS_SHUTDOWN_GRACE_SECS")
            if value is not None:
                return int(value)
    return DEFAULT_SHUTDOWN_GRACE_SECS


def http_probe_path(probe: dict | None) -> str | None:
    if not probe:
        return None
    return (probe.get("httpGet") or {}).get("path")


def check_pod(name: str, template: dict, grace_secs: int) -> list[str]:
    misses: list[str] = []
    labels = (template.get("metadata") or {}).get("labels") or {}
    component = labels.get("app.kubernetes.io/component", "")
    spec = template.get("spec") or {}
    pod_sc = spec.get("securityContext") or {}

    def miss(what: str) -> None:
        misses.append(f"{name}: {what}")

    if spec.get("automountServiceAccountToken") is not False:
        miss("automountServiceAccountToken is not false")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            miss(f"{field} is true (forbidden by the restricted standard)")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            miss(f"volume {volume.get('name')} is a hostPath (forbidden)")
    if component in GRACEFUL_COMPONENTS:
        tgps = spec.get("terminationGracePeriodSeconds", 30)
        if not tgps > grace_secs:
            miss(
                f"terminationGracePeriodSeconds {tgps} is not above "
                f"AI_AGENTS_SHUTDOWN_GRACE_SECS ({grace_secs})"
            )

    containers = [("container", c) for c in spec.get("containers") or []]
    containers += [("initContainer", c) for c in spec.get("initContainers") or []]
    if not containers:
        miss("no containers")
    for kind, container in containers:
        cname = f"{kind} {container.get('name')}"
        sc = container.get("securityContext") or {}

        def cmiss(what: str, cname: str = cname) -> None:
            miss(f"{cname}: {what}")

        # Effective values: the container's setting wins over the pod's.
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            cmiss("runAsNonRoot is not true (pod or container)")
        run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if run_as_user == 0:
            cmiss("runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            cmiss(f"seccompProfile.type is {seccomp!r}, not 'RuntimeDefault' (pod or container)")
        if sc.get("allowPrivilegeEscalation") is not False:
            cmiss("securityContext.allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            cmiss("securityContext.privileged is true")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            cmiss("securityContext.capabilities.drop does not contain ALL")
        extra = [c for c in caps.get("add") or [] if c != "NET_BIND_SERVICE"]
        if extra:
            cmiss(f"securityContext.capabilities.add has {extra} (only NET_BIND_SERVICE allowed)")
        if sc.get("readOnlyRootFilesystem") is not True:
            cmiss("securityContext.readOnlyRootFilesystem is not true")

        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(section) or {}):
                    cmiss(f"resources.{section}.{resource} is missing")

        if kind == "container" and component in HTTP_COMPONENTS:
            if http_probe_path(container.get("livenessProbe")) != "/health":
                cmiss("livenessProbe is not an httpGet of /health")
            if http_probe_path(container.get("readinessProbe")) != "/health/ready":
                cmiss("readinessProbe is not an httpGet of /health/ready")
            if component == "api" and not container.get("startupProbe"):
                cmiss("startupProbe is missing")
    return misses


def metrics_ports(objects: list[dict]) -> dict[str, int]:
    """The metrics port of each component, from its ConfigMap address (contract section 9:
    /metrics is reachable only by the scraper)."""
    ports: dict[str, int] = {}
    for obj in objects:
        if obj["kind"] != "ConfigMap":
            continue
        data = obj.get("data") or {}
        for component, key in (("api", "AI_AGENTS_API_METRICS_ADDR"),
                               ("worker", "AI_AGENTS_WORKER_METRICS_ADDR")):
            if data.get(key):
                ports[component] = int(str(data[key]).rsplit(":", 1)[1])
    return ports


def check_metrics_exposure(objects: list[dict]) -> list[str]:
    """Every NetworkPolicy rule that admits a component's metrics port names who may come
    (a `from`), and none admits it from everywhere; the api must have a metrics port of its
    own (else /metrics would be on the port every client reaches); no Service exposes it."""
    misses: list[str] = []
    ports = metrics_ports(objects)
    if "api" not in ports:
        misses.append("ConfigMap: AI_AGENTS_API_METRICS_ADDR is not set, so the API's "
                      "/metrics shares the port every client reaches")
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = obj.get("spec") or {}
        if obj["kind"] == "Service":
            component = (spec.get("selector") or {}).get("app.kubernetes.io/component")
            for port in spec.get("ports") or []:
                if component in ports and port.get("port") == ports[component]:
                    misses.append(f"{name}: exposes the {component}'s metrics port")
        if obj["kind"] != "NetworkPolicy":
            continue
        component = ((spec.get("podSelector") or {}).get("matchLabels") or {}).get(
            "app.kubernetes.io/component")
        if component not in ports:
            continue
        for rule in spec.get("ingress") or []:
            rule_ports = [p.get("port") for p in rule.get("ports") or []]
            if rule_ports and ports[component] not in rule_ports:
                continue
            sources = rule.get("from") or []
            open_to_all = not sources or any(
                source.get("namespaceSelector") == {} and "podSelector" not in source
                for source in sources
            )
            if open_to_all:
                misses.append(f"{name}: admits the {component}'s metrics port "
                              f"{ports[component]} from everywhere")
    return misses


def main() -> int:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "k8s"
    objects = render(directory)
    grace_secs = shutdown_grace(objects)
    misses: list[str] = []
    pods = 0
    components: set[str] = set()

    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    if not namespaces:
        misses.append("no Namespace in the kustomization")
    for ns in namespaces:
        labels = (ns.get("metadata") or {}).get("labels") or {}
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            misses.append(
                f"Namespace/{ns['metadata']['name']}: label "
                "pod-security.kubernetes.io/enforce is not 'restricted'"
            )

    for obj in objects:
        if obj["kind"] not in WORKLOADS:
            continue
        template = pod_template(obj)
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if not template:
            misses.append(f"{name}: no pod template")
            continue
        pods += 1
        labels = (template.get("metadata") or {}).get("labels") or {}
        components.add(labels.get("app.kubernetes.io/component", ""))
        misses += check_pod(name, template, grace_secs)

    misses += check_metrics_exposure(objects)

    for wanted in sorted(HTTP_COMPONENTS | GRACEFUL_COMPONENTS):
        if wanted not in components:
            misses.append(f"no pod template with app.kubernetes.io/component={wanted}")

    if misses:
        print(f"check_manifests: {len(misses)} problem(s) in {directory}:", file=sys.stderr)
        for line in misses:
            print(f"  - {line}", file=sys.stderr)
        return 1
    print(
        f"check_manifests: ok: {pods} pod templates ({', '.join(sorted(components))}) meet the "
        f"restricted standard, have requests and limits; api and worker probes and grace periods "
        f"(> {grace_secs} s) in place; metrics ports open to the scraper only"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
