# ./dev-services.sh as a Nix package, with PostgreSQL 17 and Redis 7 on its PATH.
# writeShellApplication runs shellcheck on the script when it builds.
# Used by `nix run .#dev-services -- start` and by the nextest check.
{
  pkgs,
  # Redis 7.2 from the nixpkgs-redis7 input (nixos-25.05; nixos-26.05 only has Redis 8).
  redis,
}:
pkgs.writeShellApplication {
  name = "dev-services";
  runtimeInputs = [
    pkgs.postgresql_17
    redis
    pkgs.coreutils
    pkgs.gnused
  ];
  # writeShellApplication writes its own shebang and `set -o errexit nounset pipefail`.
  text = pkgs.lib.removePrefix "#!/usr/bin/env bash\n" (builtins.readFile ./dev-services.sh);
  meta = {
    description = "Start/stop local PostgreSQL 17 and Redis 7 for ai-agents (start|stop|status|env)";
    platforms = pkgs.lib.platforms.linux;
  };
}
