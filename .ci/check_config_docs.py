#!/usr/bin/env python3
"""Checks that every configuration variable is documented and deployable:

- in `.env.example` (set, or commented out with its default: `# NAME=...`);
- in Kubernetes: a key of `k8s/configmap.yaml` (data) or of `k8s/secrets.yaml.example`
  (stringData/data);
- in `docs/configuration.md` (as `NAME`, in backticks).

The variables are those of CONTRACT.md §4 plus the project's additions (FACTS.md). The §4
list is read from the table in `../shared/CONTRACT.md` (next to the repository) when that
file exists, and must then equal the fixed list below: when the contract gains or loses a
variable, this check fails until the list here (and the files above) follow. Without the
contract file, the fixed list is used alone.

Exits 1 listing every miss. Usage: python3 .ci/check_config_docs.py. Needs PyYAML.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CONTRACT = REPO.parent / "shared" / "CONTRACT.md"

# CONTRACT.md §4, in its order. Keep in sync with the contract (checked when it is present).
CONTRACT_VARIABLES = [
    "AI_AGENTS_ENVIRONMENT",
    "AI_AGENTS_LOG_LEVEL",
    "AI_AGENTS_LOG_FORMAT",
    "AI_AGENTS_BIND_ADDR",
    "AI_AGENTS_DATABASE_URL",
    "AI_AGENTS_DATABASE_POOL_SIZE",
    "AI_AGENTS_DATABASE_MIN_CONNECTIONS",
    "AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS",
    "AI_AGENTS_REDIS_URL",
    "AI_AGENTS_REDIS_MAX_CONNECTIONS",
    "AI_AGENTS_REDIS_POOL_TIMEOUT_SECS",
    "AI_AGENTS_RUN_MIGRATIONS",
    "AI_AGENTS_ADMIN_TOKEN",
    "AI_AGENTS_ENCRYPTION_KEY",
    "AI_AGENTS_ENCRYPTION_OLD_KEYS",
    "AI_AGENTS_CLIENT_READ_TIMEOUT_SECS",
    "AI_AGENTS_ALLOW_INTERNAL_URLS",
    "AI_AGENTS_WORKER_CONCURRENCY",
    "AI_AGENTS_WORKER_MAX_RETRIES",
    "AI_AGENTS_WORKER_RETRY_BASE_MS",
    "AI_AGENTS_WORKER_RECLAIM_AFTER_SECS",
    "AI_AGENTS_TASK_SOFT_TIME_LIMIT_SECS",
    "AI_AGENTS_TASK_TIME_LIMIT_SECS",
    "AI_AGENTS_SHUTDOWN_GRACE_SECS",
]

# The project's additions to the contract (FACTS.md).
EXTRA_VARIABLES = [
    "AI_AGENTS_QUEUE_PREFIX",
    "AI_AGENTS_WORKER_METRICS_ADDR",
    "AI_AGENTS_REQUEST_TIMEOUT_SECS",
    "AI_AGENTS_API_METRICS_ADDR",
    "AI_AGENTS_DATABASE_STATEMENT_TIMEOUT_MS",
    "AI_AGENTS_DATABASE_LOCK_TIMEOUT_MS",
    "AI_AGENTS_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    "AI_AGENTS_WORKER_ORPHAN_AFTER_SECS",
    "AI_AGENTS_DEAD_LETTER_MAX",
    "AI_AGENTS_DEAD_LETTER_RETENTION_DAYS",
]


def contract_variables(path: Path) -> list[str]:
    """The variables of the §4 table of CONTRACT.md, in order."""
    section = re.search(r"^## 4\..*?(?=^## )", path.read_text(), re.S | re.M)
    if not section:
        raise SystemExit(f"check_config_docs: no section '## 4.' in {path}")
    return re.findall(r"^\|\s*`([A-Z][A-Z0-9_]+)`\s*\|", section.group(0), re.M)


def yaml_keys(path: Path) -> set[str]:
    keys: set[str] = set()
    if not path.exists():
        return keys
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict):
            for field in ("data", "stringData"):
                keys |= set((doc.get(field) or {}).keys())
    return keys


def main() -> int:
    problems: list[str] = []
    if CONTRACT.exists():
        parsed = contract_variables(CONTRACT)
        source = str(CONTRACT)
        if parsed != CONTRACT_VARIABLES:
            added = [v for v in parsed if v not in CONTRACT_VARIABLES]
            removed = [v for v in CONTRACT_VARIABLES if v not in parsed]
            problems.append(
                "the fixed list of .ci/check_config_docs.py differs from CONTRACT.md §4 "
                f"(in the contract only: {added or 'none'}; in the script only: "
                f"{removed or 'none'}; else the order): update CONTRACT_VARIABLES"
            )
        variables = parsed + [v for v in EXTRA_VARIABLES if v not in parsed]
    else:
        source = "the fixed list (no ../shared/CONTRACT.md)"
        variables = CONTRACT_VARIABLES + EXTRA_VARIABLES

    env_example = REPO / ".env.example"
    env_text = env_example.read_text() if env_example.exists() else ""
    if not env_text:
        problems.append(".env.example is missing or empty")
    k8s_keys = yaml_keys(REPO / "k8s" / "configmap.yaml") | yaml_keys(
        REPO / "k8s" / "secrets.yaml.example"
    )
    if not k8s_keys:
        problems.append("k8s/configmap.yaml and k8s/secrets.yaml.example define no keys")
    docs = REPO / "docs" / "configuration.md"
    docs_text = docs.read_text() if docs.exists() else ""
    if not docs_text:
        problems.append("docs/configuration.md is missing or empty")

    for var in variables:
        if not re.search(rf"^[ \t]*(#[ \t]*)?{var}=", env_text, re.M):
            problems.append(f"{var}: not in .env.example (as {var}=... or # {var}=...)")
        if var not in k8s_keys:
            problems.append(
                f"{var}: not a key of k8s/configmap.yaml or k8s/secrets.yaml.example"
            )
        if f"`{var}`" not in docs_text:
            problems.append(f"{var}: not in docs/configuration.md (as `{var}`)")

    if problems:
        print(f"check_config_docs: {len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
        return 1
    print(
        f"check_config_docs: ok: {len(variables)} variables ({source} and the "
        f"{len(EXTRA_VARIABLES)} additions) are in .env.example, k8s/ and docs/configuration.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
