{
  description = "ai-agents: AI ticket-enhancement API and worker: static musl binaries, OCI images, dev shell";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    # Only for Redis 7.2 in the devShell, dev-services and the test check: nixos-26.05 packages
    # Redis 8. nixos-25.05 (end of life, frozen) has 7.2.11+, patched for CVE-2025-49844;
    # nixos-24.11 stopped at 7.2.7, without that fix.
    nixpkgs-redis7.url = "github:NixOS/nixpkgs/nixos-25.05";
    # crane has no inputs of its own.
    crane.url = "github:ipetkov/crane";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      nixpkgs-redis7,
      crane,
      rust-overlay,
    }:
    let
      inherit (nixpkgs) lib;

      # Static binaries, images and checks: Linux only. Darwin gets the devShell.
      linuxSystems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      allSystems = linuxSystems ++ [ "aarch64-darwin" ];

      perSystem =
        system:
        let
          pkgs = import nixpkgs {
            inherit system;
            overlays = [ rust-overlay.overlays.default ];
          };
          redis = nixpkgs-redis7.legacyPackages.${system}.redis;
          devServices = import ./nix/dev-services.nix { inherit pkgs redis; };
          # git revision of the flake source: the images' label and the binaries' build info.
          # A tree with uncommitted changes has no `rev`; Nix then sets `dirtyRev` to
          # "<last commit>-dirty". "dirty" is left for a source that is not a git checkout.
          revision = self.rev or self.dirtyRev or "dirty";
          rust = import ./nix/rust.nix {
            inherit
              pkgs
              crane
              devServices
              redis
              revision
              ;
          };
        in
        {
          inherit
            pkgs
            redis
            devServices
            rust
            ;
          images = import ./nix/images.nix {
            inherit pkgs;
            inherit (rust) api worker cargoPackage;
            inherit (rust.crate) version;
            inherit revision;
          };
        };

      forSystems = systems: f: lib.genAttrs systems (system: f (perSystem system));
    in
    {
      packages = forSystems linuxSystems (s: {
        inherit (s.rust) api worker;
        default = s.rust.api;
        api-image = s.images.api;
        worker-image = s.images.worker;
        dev-services = s.devServices;
      });

      # `nix run .#dev` (the stack until Ctrl-C) and `nix run .#test` (the test suite): the
      # README's two commands, run inside the checkout.
      apps = forSystems linuxSystems (
        s:
        import ./nix/apps.nix {
          inherit (s) pkgs devServices;
          inherit (s.rust) devToolchain;
        }
      );

      checks = forSystems linuxSystems (
        s:
        s.rust.checks
        // {
          # building it runs shellcheck on nix/dev-services.sh
          dev-services = s.devServices;
        }
      );

      devShells = forSystems allSystems (s: {
        default = import ./nix/devshell.nix {
          inherit (s) pkgs redis;
          inherit (s.rust) devToolchain muslCcEnv;
        };
      });

      formatter = forSystems allSystems (s: s.pkgs.nixfmt-tree);
    };
}
