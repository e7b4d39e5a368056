#!/usr/bin/env bash
# Offline checks of the Nix flake, for machines where Nix cannot download anything:
#   1. every git-tracked *.nix file parses (nix-instantiate --parse);
#   2. every relative path that a tracked .nix file names (./nix/rust.nix, ../migrations …)
#      is tracked by git, because a flake sees only tracked files (lib.fileset.maybeMissing
#      paths may be absent);
#   3. `nix flake metadata --no-update-lock-file`: flake.lock has a node for every input
#      whose `original` and `follows` match flake.nix. A mismatch makes Nix go to the
#      network, which fails here; nothing is downloaded when the lock is right.
#   4. every program the tests start by name (`Command::new("…")` in tests/) is on the PATH
#      of the flake's nextest check: an entry of its nativeBuildInputs in nix/rust.nix whose
#      comment names the program (`pkgs.coreutils # kill: …`). Inside the build sandbox the
#      PATH holds nothing else.
# It does not build or evaluate the outputs (that needs nixpkgs): see docs/nix.md.
# Without Nix it says so and exits 0; installing nix-bin (apt-get install nix-bin) is the
# caller's job.
set -euo pipefail

root=$(git -C "$(dirname -- "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd -- "$root"

if ! command -v nix-instantiate >/dev/null 2>&1 || ! command -v nix >/dev/null 2>&1; then
  echo "check-nix: SKIPPED: nix is not installed (e.g. apt-get install nix-bin); nothing was checked"
  exit 0
fi
echo "check-nix: $(nix --version)"

store_args=()
nix_cmd() {
  nix --extra-experimental-features 'nix-command flakes' "${store_args[@]}" "$@"
}
# Without root and without a reachable nix-daemon the default store is unusable: use a
# throw-away local store (flake metadata copies the flake source into a store).
if ! nix_cmd store ping >/dev/null 2>&1; then
  private_store=$(mktemp -d)
  trap 'chmod -R u+w -- "$private_store" 2>/dev/null; rm -rf -- "$private_store"' EXIT
  store_args=(--store "$private_store")
  echo "check-nix: default Nix store not usable here (not root, no daemon): using $private_store"
fi

failed=0

# ---- 1. syntax
mapfile -t nix_files < <(git ls-files -- '*.nix')
if ((${#nix_files[@]} == 0)); then
  echo "check-nix: FAIL: no git-tracked .nix files (git add flake.nix nix/*.nix)"
  exit 1
fi
for file in "${nix_files[@]}"; do
  if out=$(nix-instantiate "${store_args[@]}" --parse -- "$file" 2>&1 >/dev/null); then
    echo "parse ok:        $file"
  else
    echo "parse FAILED:    $file"
    printf '%s\n' "$out" | sed 's/^/    /'
    failed=1
  fi
done

# ---- 2. relative paths named in .nix files must be tracked
declare -A seen=()
for file in "${nix_files[@]}"; do
  dir=$(dirname -- "$file")
  # path literals ./x and ../x outside comments (not inside URLs such as github:owner/repo)
  while IFS= read -r line; do
    while IFS= read -r path; do
      [[ -n $path ]] || continue
      target=$(realpath -m --relative-to="$root" -- "$dir/$path")
      [[ $target != . ]] || continue # the repository root itself
      [[ -z ${seen["$file -> $target"]:-} ]] || continue
      seen["$file -> $target"]=1
      if [[ -n $(git ls-files -- "$target" | head -n1) ]]; then
        echo "path tracked:    $file -> $target"
      elif [[ $line == *maybeMissing* ]]; then
        echo "path optional:   $file -> $target (lib.fileset.maybeMissing, not tracked)"
      else
        echo "path NOT TRACKED: $file -> $target (a flake sees only git-tracked files: git add it)"
        failed=1
      fi
    done < <(grep -oE '(^|[[:space:]([])\.\.?/[A-Za-z0-9_.-][A-Za-z0-9_./-]*' <<<"$line" |
      sed -E 's/^[[:space:]([]//')
  done < <(grep -vE '^[[:space:]]*#' -- "$file")
done

# ---- 3. lock file matches flake.nix, offline
for file in flake.nix flake.lock; do
  if [[ -z $(git ls-files -- "$file") ]]; then
    echo "check-nix: FAIL: $file is not tracked by git (flakes see only tracked files)"
    exit 1
  fi
done
echo "flake metadata:  nix flake metadata --no-update-lock-file"
strip_colours() { sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /'; }
if out=$(nix_cmd flake metadata --no-update-lock-file --option connect-timeout 5 2>&1); then
  printf '%s\n' "$out" | strip_colours
else
  printf '%s\n' "$out" | strip_colours
  echo "check-nix: FAIL: flake.lock does not match flake.nix (or the flake is unreadable)"
  failed=1
fi

# ---- 4. programs the tests spawn are on the nextest check's PATH
mapfile -t spawned < <(git ls-files -z -- 'tests/*.rs' 'tests/**/*.rs' |
  xargs -0 -r grep -hoE 'Command::new\("[^"/]+"\)' |
  sed -E 's/^Command::new\("(.*)"\)$/\1/' | sort -u)
# The nativeBuildInputs list inside the nextest check, from its opening to its closing bracket.
inputs=$(awk '
  /nextest = craneLib\.cargoNextest/ { in_check = 1 }
  in_check && /nativeBuildInputs = \[/ { in_list = 1; next }
  in_list && /^[[:space:]]*\];/ { exit }
  in_list { print }
' nix/rust.nix)
if [[ -z $inputs ]]; then
  echo "check-nix: FAIL: no nativeBuildInputs list found in the nextest check of nix/rust.nix"
  failed=1
fi
for program in "${spawned[@]}"; do
  entry=$({ grep -E "#[[:space:]]*${program//./\\.}:" <<<"$inputs" || true; } | head -n1 |
    sed -E 's/^[[:space:]]*//; s/[[:space:]]*#.*$//')
  if [[ -n $entry ]]; then
    echo "test program:    $program <- $entry (nextest check, nix/rust.nix)"
  else
    echo "test program NOT IN CHECK: tests start '$program', but no nativeBuildInputs entry of the nextest check in nix/rust.nix names it ('<package> # $program: why')"
    failed=1
  fi
done

if ((failed)); then
  echo "check-nix: FAILED"
  exit 1
fi
echo "check-nix: OK (${#nix_files[@]} .nix files parsed, flake.lock consistent, ${#spawned[@]} test programs in the nextest check; outputs not evaluated)"
