# ./dev-services.sh as a Nix package, with PostgreSQL 17 and Redis 7 on its PATH and the role
# set-up script it runs (k8s/postgres/init-roles.sh) beside it in the store.
# writeShellApplication runs shellcheck on the script when it builds.
# Used by `nix run .#dev-services -- start`, by the nextest check and by the apps of
# ./apps.nix (`nix run .#dev`, `nix run .#test`).
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
    # setsid (up runs the API and the worker in sessions of their own), runuser (as root)
    pkgs.util-linux
  ];
  # The script creates the roles with the deployments' own k8s/postgres/init-roles.sh, which it
  # finds beside itself in a checkout; the store has no checkout around it, so it gets the file
  # (copied to the store on its own by the interpolation) by name.
  runtimeEnv.AI_AGENTS_INIT_ROLES_SCRIPT = "${../k8s/postgres/init-roles.sh}";
  # writeShellApplication writes its own shebang and `set -o errexit nounset pipefail`.
  text = pkgs.lib.removePrefix "#!/usr/bin/env bash\n" (builtins.readFile ./dev-services.sh);
  meta = {
    description = "Local PostgreSQL 17 and Redis 7 for ai-agents, and the stack on them (up, test)";
    platforms = pkgs.lib.platforms.linux;
  };
}
