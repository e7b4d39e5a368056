#!/usr/bin/env bash
# The README's test command (`cargo test --locked`) instrumented with cargo-llvm-cov, held to
# the project's floor: at least 80 % of lines. The one home of that command and that floor:
# .ci/run and the GitHub workflow both call this script, so they measure the same way.
#
#   bash .ci/coverage.sh --summary-only                  # per-file table (what .ci/run prints)
#   bash .ci/coverage.sh --lcov --output-path lcov.info  # what the workflow uploads
#   bash .ci/coverage.sh --html                          # target/llvm-cov/html/index.html
#
# Extra arguments go to `cargo llvm-cov`. The tests need their services (README, "Tests"). The
# binaries the tests start are instrumented as well and write their profiles through
# LLVM_PROFILE_FILE, which tests/it/helpers/process.rs passes on. Installs what is missing: rustup's
# llvm-tools component and cargo-llvm-cov 0.9.x (built from crates.io).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

floor=80

if ! rustup component list --installed | grep -q '^llvm-tools'; then
    rustup component add llvm-tools
fi
if ! cargo llvm-cov --version 2>/dev/null | grep -q ' 0\.9\.'; then
    cargo install cargo-llvm-cov --version '~0.9' --locked
fi
cargo llvm-cov --version

started=$(date +%s)
if cargo llvm-cov --locked --fail-under-lines "$floor" "$@"; then
    echo "coverage: at least $floor % of lines; tests and report took $(($(date +%s) - started)) s"
else
    echo "coverage: FAILED: a test failed, or fewer than $floor % of lines ran (see above)" >&2
    exit 1
fi
