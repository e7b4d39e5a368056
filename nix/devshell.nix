# `nix develop`: the Rust toolchain of rust-toolchain.toml (with the musl target on Linux,
# rust-src, rust-analyzer, llvm-tools), PostgreSQL 17, Redis 7, sqlx-cli, cargo-nextest,
# watchexec and friends. Entering the shell exports the AI_AGENTS_* URLs of the local
# services and, on Linux, starts them with nix/dev-services.sh (state in .dev/; never as
# root; opt out with AI_AGENTS_NO_SERVICES=1).
{
  pkgs,
  # from ./rust.nix
  devToolchain,
  muslCcEnv,
  # Redis 7.2 from the nixpkgs-redis7 input (nixos-25.05)
  redis,
}:
let
  inherit (pkgs) lib stdenv;

  # Tools that may be missing, renamed or unsupported in a nixpkgs release are added only
  # when they evaluate and are available on this platform.
  optionalPackage =
    name:
    let
      attempt = builtins.tryEval (pkgs.${name} or null);
    in
    lib.optional (
      attempt.success && attempt.value != null && lib.meta.availableOn stdenv.hostPlatform attempt.value
    ) attempt.value;
in
pkgs.mkShell (
  {
    packages = [
      devToolchain
      pkgs.postgresql_17
      redis
      pkgs.sqlx-cli
      pkgs.cargo-nextest
      pkgs.shellcheck
      pkgs.jq
      # `nix/dev-services.sh up --watch`: rebuild and restart on changes
      pkgs.watchexec
    ]
    # setsid, with which `nix/dev-services.sh up` gives the API and the worker sessions of their own
    ++ lib.optional stdenv.hostPlatform.isLinux pkgs.util-linux
    ++ optionalPackage "cargo-llvm-cov";

    buildInputs = lib.optionals stdenv.hostPlatform.isDarwin [ pkgs.libiconv ];

    shellHook = ''
      ai_agents_root=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
      if [ -x "$ai_agents_root/nix/dev-services.sh" ]; then
        # AI_AGENTS_DATABASE_URL, AI_AGENTS_APP_DATABASE_URL, AI_AGENTS_REDIS_URL
        eval "$("$ai_agents_root/nix/dev-services.sh" env)"
        if [ "''${AI_AGENTS_NO_SERVICES:-0}" = 1 ]; then
          echo "ai-agents: AI_AGENTS_NO_SERVICES=1, local services not started" >&2
        elif [ "$(id -u)" = 0 ]; then
          echo "ai-agents: running as root, local services not started (start them with nix/dev-services.sh start)" >&2
        elif [ "$(uname -s)" != Linux ]; then
          echo "ai-agents: nix/dev-services.sh needs Linux (/proc); start postgres and redis-server (on PATH here) yourself on the ports of the AI_AGENTS_*_URL variables" >&2
        else
          "$ai_agents_root/nix/dev-services.sh" start ||
            echo "ai-agents: starting the local services failed (see above); cargo run will not reach them" >&2
        fi
      else
        echo "ai-agents: run 'nix develop' inside the ai-agents checkout to get the local services" >&2
      fi
      unset ai_agents_root
    '';
  }
  # Lets `cargo build --target <arch>-unknown-linux-musl` compile ring inside the shell.
  // muslCcEnv
)
