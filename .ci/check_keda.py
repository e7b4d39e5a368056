#!/usr/bin/env python3
"""Checks the worker's autoscaler in both Kubernetes builds, offline:

- the default build (`kubectl kustomize k8s/`) scales the worker with the CPU
  HorizontalPodAutoscaler and contains no KEDA object;
- the KEDA build (k8s/ plus k8s/components/keda) has no HorizontalPodAutoscaler for the worker
  and one ScaledObject that takes the CPU HPA over (same name, transfer annotation), with the
  same minimum, maximum and scale-down behaviour;
- every KEDA object is valid against KEDA's own CRD schema (.ci/keda/, strict: unknown fields
  fail, as the API server's strict field validation does), plus the CRD's one CEL rule;
- every `redis-streams` trigger reads the stream and consumer group the worker really uses:
  `PREFIX:jobs` with PREFIX = AI_AGENTS_QUEUE_PREFIX (the worker's effective value: its
  container env, else the ConfigMap) and the `:jobs` suffix and group read from src/queue;
  its per-replica count equals AI_AGENTS_WORKER_CONCURRENCY; it uses only metadata keys that
  KEDA's scaler reads (a misspelt key is silently ignored by KEDA) and no literal secret;
- its TriggerAuthentication exists, reads the Secret `ai-agents`, and every key it reads is
  documented in k8s/secrets.yaml.example;
- the Redis address is the in-cluster Service's, in its namespace, when that Service is built.

Before checking the real builds it checks mutated copies of them (wrong group, wrong stream,
unknown field, ...) and fails unless each mutation is caught, so the check cannot pass by
checking nothing.

Usage: python3 .ci/check_keda.py DEFAULT_BUILD.yaml KEDA_BUILD.yaml (rendered manifests).
Needs PyYAML and jsonschema. Exits 1 listing every problem.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = {
    "ScaledObject": REPO / ".ci/keda/scaledobject.v1alpha1.schema.json",
    "TriggerAuthentication": REPO / ".ci/keda/triggerauthentication.v1alpha1.schema.json",
}
KEDA_API = "keda.sh/v1alpha1"
WORKER = "ai-agents-worker"
SECRET = "ai-agents"
CONFIGMAP = "ai-agents-config"
# The default maxReplicaCount of the CRD's CEL rule.
KEDA_DEFAULT_MAX = 100

# Trigger metadata the redis-streams scaler of KEDA v2.20.2 reads
# (pkg/scalers/redis_streams_scaler.go, redisStreamsMetadata and redisConnectionInfo).
SCALER_KEYS = {
    "address", "addresses", "host", "hosts", "port", "ports", "username", "password",
    "sentinelUsername", "sentinelPassword", "sentinelMaster", "unsafeSsl", "enableTLS",
    "stream", "consumerGroup", "lagCount", "pendingEntriesCount", "streamLength",
    "activationLagCount", "databaseIndex",
}  # fmt: skip
# Of those, the ones KEDA also resolves from the target's environment as `<name>FromEnv`.
FROM_ENV_KEYS = {
    "address", "addresses", "host", "hosts", "port", "ports", "username", "password",
    "sentinelUsername", "sentinelPassword", "sentinelMaster",
}  # fmt: skip
# Never as literal metadata: a secret belongs in the TriggerAuthentication's Secret.
SECRET_KEYS = {"password", "sentinelPassword"}
# Parameters of a TriggerAuthentication that the Redis scalers read (authParams).
AUTH_PARAMS = {
    "address", "addresses", "host", "hosts", "port", "ports", "username", "password",
    "sentinelUsername", "sentinelPassword", "sentinelMaster", "tls", "ca", "cert", "key",
    "keyPassword",
}  # fmt: skip


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        d
        for d in docs
        if d.get("kind") == kind and (name is None or d["metadata"].get("name") == name)
    ]


def strict(schema: object) -> object:
    """The CRD schema as JSON Schema that rejects unknown fields: every object that lists its
    properties and does not say otherwise gets `additionalProperties: false`."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validators() -> dict[str, jsonschema.protocols.Validator]:
    out = {}
    for kind, path in SCHEMAS.items():
        schema = strict(json.loads(path.read_text()))
        jsonschema.Draft4Validator.check_schema(schema)
        out[kind] = jsonschema.Draft4Validator(schema)
    return out


def rust_names() -> tuple[str, str]:
    """The consumer group and the stream key's suffix, as src/queue/mod.rs defines them."""
    source = (REPO / "src/queue/mod.rs").read_text()
    group = re.search(r'pub const GROUP: &str = "([^"]+)";', source)
    suffix = re.search(r'jobs: format!\("\{prefix\}([^"]*)"\)', source)
    if not group or not suffix:
        raise SystemExit(
            'check_keda: cannot find `pub const GROUP` or `jobs: format!("{prefix}...")` in '
            "src/queue/mod.rs; update rust_names() in .ci/check_keda.py to where they live now"
        )
    return group.group(1), suffix.group(1)


def worker_setting(docs: list[dict], name: str) -> str | None:
    """The worker's effective value of a variable: its container env, else the ConfigMap."""
    for deployment in find(docs, "Deployment", WORKER):
        for container in deployment["spec"]["template"]["spec"].get("containers") or []:
            for env in container.get("env") or []:
                if env.get("name") == name and "value" in env:
                    return str(env["value"])
    for cm in find(docs, "ConfigMap", CONFIGMAP):
        value = (cm.get("data") or {}).get(name)
        if value is not None:
            return str(value)
    return None


def worker_hpas(docs: list[dict]) -> list[dict]:
    return [
        h
        for h in find(docs, "HorizontalPodAutoscaler")
        if (h["spec"].get("scaleTargetRef") or {}).get("name") == WORKER
    ]


def check_default(docs: list[dict]) -> list[str]:
    problems = []
    hpas = worker_hpas(docs)
    if len(hpas) != 1:
        problems.append(f"default build: {len(hpas)} HPAs target Deployment/{WORKER}, not 1")
    keda = [d["kind"] for d in docs if d.get("apiVersion", "").startswith("keda.sh/")]
    if keda:
        problems.append(f"default build: KEDA objects {keda} (it must work without KEDA)")
    return problems


def check_schemas(docs: list[dict], schemas: dict) -> list[str]:
    problems = []
    for doc in docs:
        if not doc.get("apiVersion", "").startswith("keda.sh/"):
            continue
        name = f"{doc['kind']}/{doc['metadata'].get('name')}"
        if doc["apiVersion"] != KEDA_API or doc["kind"] not in schemas:
            problems.append(f"{name}: {doc['apiVersion']} {doc['kind']} has no schema here")
            continue
        for error in sorted(schemas[doc["kind"]].iter_errors(doc), key=str):
            path = ".".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append(f"{name}: {path}: {error.message}")
        spec = doc.get("spec") or {}
        if doc["kind"] == "ScaledObject" and "minReplicaCount" in spec:
            if spec["minReplicaCount"] > spec.get("maxReplicaCount", KEDA_DEFAULT_MAX):
                problems.append(f"{name}: minReplicaCount is above maxReplicaCount (CRD rule)")
    return problems


def check_trigger(trigger: dict, index: int, expect: dict[str, str]) -> list[str]:
    where = f"ScaledObject/{WORKER}: trigger {trigger.get('name', index)}"
    meta = trigger.get("metadata") or {}
    problems = []
    for key in meta:
        base = key.removesuffix("FromEnv")
        known = key in SCALER_KEYS or (key != base and base in FROM_ENV_KEYS)
        if not known:
            problems.append(f"{where}: metadata `{key}` is not read by the redis-streams scaler")
        if key in SECRET_KEYS:
            problems.append(f"{where}: metadata `{key}` puts a secret in the manifest")
    for key in ("stream", "consumerGroup"):
        if meta.get(key) != expect[key]:
            problems.append(f"{where}: {key} is {meta.get(key)!r}, the worker uses {expect[key]!r}")
    counts = [k for k in ("lagCount", "pendingEntriesCount") if k in meta]
    if len(counts) != 1:
        problems.append(
            f"{where}: needs exactly one of lagCount, pendingEntriesCount (has {counts}); with "
            "both KEDA ignores pendingEntriesCount"
        )
    for key in counts:
        if meta[key] != expect["concurrency"]:
            problems.append(
                f"{where}: {key} is {meta[key]!r}, not AI_AGENTS_WORKER_CONCURRENCY "
                f"({expect['concurrency']!r})"
            )
    return problems


def check_keda(default: list[dict], docs: list[dict], group: str, suffix: str) -> list[str]:
    problems = []
    if worker_hpas(docs):
        problems.append(f"KEDA build: an HPA still targets Deployment/{WORKER} beside KEDA")
    scaled = [
        s
        for s in find(docs, "ScaledObject")
        if (s.get("spec") or {}).get("scaleTargetRef", {}).get("name") == WORKER
    ]
    if len(scaled) != 1:
        return problems + [f"KEDA build: {len(scaled)} ScaledObjects target {WORKER}, not 1"]
    so = scaled[0]
    spec = so["spec"]
    namespace = so["metadata"].get("namespace")
    worker = find(docs, "Deployment", WORKER)
    if worker and worker[0]["metadata"].get("namespace") != namespace:
        problems.append(f"ScaledObject/{WORKER}: namespace {namespace!r} is not the worker's")

    hpa = (worker_hpas(default) or [None])[0]
    hpa_config = (spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}
    if hpa:
        for ours, theirs in (
            ("minReplicaCount", "minReplicas"),
            ("maxReplicaCount", "maxReplicas"),
        ):
            if spec.get(ours) != hpa["spec"].get(theirs):
                problems.append(
                    f"ScaledObject/{WORKER}: {ours} {spec.get(ours)} differs from the CPU HPA's "
                    f"{theirs} {hpa['spec'].get(theirs)}"
                )
        wanted = (hpa["spec"].get("behavior") or {}).get("scaleDown")
        if (hpa_config.get("behavior") or {}).get("scaleDown") != wanted:
            problems.append(
                f"ScaledObject/{WORKER}: scaleDown behaviour differs from the CPU HPA's"
            )
        annotations = so["metadata"].get("annotations") or {}
        if (
            hpa_config.get("name") != hpa["metadata"]["name"]
            or annotations.get("scaledobject.keda.sh/transfer-hpa-ownership") != "true"
        ):
            problems.append(
                f"ScaledObject/{WORKER}: does not take the CPU HPA over (horizontalPodAutoscaler"
                "Config.name and the transfer-hpa-ownership annotation): switching from k8s/ "
                "would be refused by KEDA's webhook"
            )

    prefix = worker_setting(docs, "AI_AGENTS_QUEUE_PREFIX")
    concurrency = worker_setting(docs, "AI_AGENTS_WORKER_CONCURRENCY")
    if prefix is None or concurrency is None:
        return problems + [
            "KEDA build: AI_AGENTS_QUEUE_PREFIX or AI_AGENTS_WORKER_CONCURRENCY not set"
        ]
    expect = {"stream": f"{prefix}{suffix}", "consumerGroup": group, "concurrency": concurrency}
    triggers = spec.get("triggers") or []
    streams = [t for t in triggers if t.get("type") == "redis-streams"]
    if not streams:
        problems.append(f"ScaledObject/{WORKER}: no redis-streams trigger")
    if not any("lagCount" in (t.get("metadata") or {}) for t in streams):
        problems.append(f"ScaledObject/{WORKER}: no trigger scales on the backlog (lagCount)")
    redis_services = find(docs, "Service", "redis")
    for index, trigger in enumerate(streams):
        problems += check_trigger(trigger, index, expect)
        address = (trigger.get("metadata") or {}).get("address", "")
        if redis_services:
            ns = redis_services[0]["metadata"].get("namespace")
            if not address.startswith(f"redis.{ns}.svc"):
                problems.append(
                    f"ScaledObject/{WORKER}: address {address!r} is not the in-cluster Redis "
                    f"Service (redis.{ns}.svc...)"
                )
    for ref in {json.dumps(t.get("authenticationRef"), sort_keys=True) for t in streams}:
        problems += check_auth(docs, json.loads(ref), namespace)
    return problems


def check_auth(docs: list[dict], ref: dict | None, namespace: str | None) -> list[str]:
    if not ref:
        return []
    auths = [
        a
        for a in find(docs, ref.get("kind", "TriggerAuthentication"), ref.get("name"))
        if a["metadata"].get("namespace") == namespace
    ]
    if not auths:
        return [f"ScaledObject/{WORKER}: authenticationRef {ref} is not in the build"]
    example = (REPO / "k8s/secrets.yaml.example").read_text()
    problems = []
    for target in (auths[0].get("spec") or {}).get("secretTargetRef") or []:
        where = f"TriggerAuthentication/{ref['name']}: {target.get('parameter')}"
        if target.get("parameter") not in AUTH_PARAMS:
            problems.append(f"{where}: not a parameter the Redis scalers read")
        if target.get("name") != SECRET:
            problems.append(f"{where}: reads Secret {target.get('name')!r}, not {SECRET!r}")
        if not re.search(rf"^\s*#?\s*{re.escape(str(target.get('key')))}:", example, re.M):
            problems.append(f"{where}: key {target.get('key')} is not in k8s/secrets.yaml.example")
    return problems


def check_all(default: list[dict], docs: list[dict], schemas: dict) -> list[str]:
    group, suffix = rust_names()
    return (
        check_default(default)
        + check_schemas(docs, schemas)
        + check_keda(default, docs, group, suffix)
    )


def mutations() -> list[tuple[str, Callable[[list[dict]], object], str]]:
    """Changes to the KEDA build that the check must catch, each with a piece of the problem
    it must report."""

    def spec(docs: list[dict]) -> dict:
        return find(docs, "ScaledObject", WORKER)[0]["spec"]

    def meta(docs: list[dict], index: int = 0) -> dict:
        return spec(docs)["triggers"][index]["metadata"]

    def worker_env(docs: list[dict]) -> list[dict]:
        container = find(docs, "Deployment", WORKER)[0]["spec"]["template"]["spec"]["containers"][0]
        return container.setdefault("env", [])

    cpu_hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": WORKER},
        "spec": {"scaleTargetRef": {"name": WORKER}},
    }
    return [
        ("another group", lambda d: meta(d).update(consumerGroup="worker"), "consumerGroup is"),
        ("another stream", lambda d: meta(d, -1).update(stream="ai-agents:job"), "stream is"),
        ("another count", lambda d: meta(d).update(lagCount="5"), "not AI_AGENTS_WORKER_CONC"),
        ("a misspelt key", lambda d: meta(d).update(lagcount="4"), "not read by the redis-str"),
        ("a literal password", lambda d: meta(d).update(password="x"), "puts a secret"),
        ("an unknown field", lambda d: spec(d).update(minReplicas=2), "'minReplicas' was unexp"),
        ("a wrong type", lambda d: spec(d).update(pollingInterval="15"), "is not of type 'integ"),
        ("min above max", lambda d: spec(d).update(maxReplicaCount=1), "(CRD rule)"),
        ("another minimum", lambda d: spec(d).update(minReplicaCount=1), "differs from the CPU"),
        (
            "a fast scale-down",
            lambda d: spec(d)["advanced"]["horizontalPodAutoscalerConfig"].pop("behavior"),
            "scaleDown behaviour differs",
        ),
        (
            "no TriggerAuthentication",
            lambda d: d.remove(find(d, "TriggerAuthentication")[0]),
            "is not in the build",
        ),
        ("the CPU HPA left in", lambda d: d.append(cpu_hpa), "an HPA still targets"),
        (
            "the worker's own prefix",
            lambda d: worker_env(d).append({"name": "AI_AGENTS_QUEUE_PREFIX", "value": "x"}),
            "stream is",
        ),
    ]


def self_test(default: list[dict], docs: list[dict], schemas: dict) -> list[str]:
    missed = []
    for name, mutate, expected in mutations():
        mutated = copy.deepcopy(docs)
        try:
            mutate(mutated)
        except (IndexError, KeyError) as e:
            missed.append(f"self-test: cannot apply the mutation {name!r} ({e!r})")
            continue
        found = check_all(default, mutated, schemas)
        if not any(expected in problem for problem in found):
            missed.append(f"self-test: {name} is not reported as {expected!r} (got {found})")
    return missed


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    default, docs = load(sys.argv[1]), load(sys.argv[2])
    schemas = validators()
    problems = self_test(default, docs, schemas) + check_all(default, docs, schemas)
    if problems:
        print(f"check_keda: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    so = find(docs, "ScaledObject", WORKER)[0]
    triggers = ", ".join(
        f"{t['name']} ({t['metadata']['stream']} / {t['metadata']['consumerGroup']}, "
        + ", ".join(
            f"{k} {t['metadata'][k]}"
            for k in ("lagCount", "pendingEntriesCount")
            if k in t["metadata"]
        )
        + ")"
        for t in so["spec"]["triggers"]
    )
    print(
        f"check_keda: ok: default build scales on CPU (HPA); KEDA build: "
        f"{sum(d.get('apiVersion', '').startswith('keda.sh/') for d in docs)} KEDA objects valid "
        f"against the CRD schemas of .ci/keda/, replicas {so['spec']['minReplicaCount']}-"
        f"{so['spec']['maxReplicaCount']} as the HPA; triggers {triggers} match src/queue and "
        f"the ConfigMap; {len(mutations())} mutations caught"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
