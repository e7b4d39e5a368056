# `nix run .#dev` and `nix run .#test`: the README's two commands (`nix/dev-services.sh up`
# and `test`, the same script through the ./dev-services.nix wrapper, so PostgreSQL 17 and
# Redis 7 come from the flake) with what they need besides: the Rust toolchain, a C
# compiler for the build scripts (ring) and watchexec for `up --watch`. Both build the
# checkout they are run in with cargo, as the devShell does.
{
  pkgs,
  # ./dev-services.nix
  devServices,
  # from ./rust.nix
  devToolchain,
}:
let
  mkApp =
    command: description:
    let
      program = pkgs.writeShellApplication {
        name = "ai-agents-${command}";
        runtimeInputs = [
          devServices
          devToolchain
          pkgs.stdenv.cc
          pkgs.watchexec
        ];
        text = ''exec dev-services ${command} "$@"'';
      };
    in
    {
      type = "app";
      program = "${program}/bin/ai-agents-${command}";
      meta = { inherit description; };
    };
in
{
  dev = mkApp "up" "PostgreSQL 17, Redis 7, the API and the worker until Ctrl-C";
  test = mkApp "test" "The test suite against a PostgreSQL 17 and Redis 7 of its own";
}
