# Rust builds with crane: one dependency derivation shared by the two binaries, clippy and
# nextest. On Linux every build targets <arch>-unknown-linux-musl with a static C runtime
# (crane's examples/cross-musl); the toolchain comes from ../rust-toolchain.toml through
# rust-overlay, with the musl target of the build machine's architecture.
{
  pkgs,
  crane,
  # writeShellApplication around ./dev-services.sh (see ./dev-services.nix); the nextest
  # check uses it to start PostgreSQL and Redis inside the build.
  devServices,
  # Redis 7.2 (the nixpkgs-redis7 input): a test starts its own redis-server from PATH.
  redis,
  # git revision, compiled into the binaries (the `ai_agents_build_info` metric); only the two
  # packages see it, so the shared dependency build stays cached across commits.
  revision ? "unknown",
}:
let
  inherit (pkgs) lib stdenv;
  inherit (stdenv.hostPlatform) isLinux isDarwin;

  # Only the keys rust-overlay's fromRustupToolchain understands.
  toolchainFile = builtins.intersectAttrs {
    channel = null;
    profile = null;
    components = null;
    targets = null;
  } (builtins.fromTOML (builtins.readFile ../rust-toolchain.toml)).toolchain;

  # x86_64-unknown-linux-musl on x86_64-linux, aarch64-unknown-linux-musl on aarch64-linux.
  muslTarget = "${stdenv.hostPlatform.parsed.cpu.name}-unknown-linux-musl";
  muslTargetEnv = lib.replaceStrings [ "-" ] [ "_" ] muslTarget;

  # Same channel, profile and components as rust-toolchain.toml (plus extraComponents);
  # the target list is the musl target of this machine on Linux, none on Darwin.
  mkToolchain =
    extraComponents: p:
    p.rust-bin.fromRustupToolchain (
      toolchainFile
      // {
        components = (toolchainFile.components or [ ]) ++ extraComponents;
        targets = lib.optional isLinux muslTarget;
      }
    );

  craneLib = (crane.mkLib pkgs).overrideToolchain (mkToolchain [ ]);

  # For `nix develop`: rust-analyzer, rust-src and llvm-tools (needed by cargo-llvm-cov).
  devToolchain = mkToolchain [
    "rust-src"
    "rust-analyzer"
    "llvm-tools"
  ] pkgs;

  crate = craneLib.crateNameFromCargoToml { cargoToml = ../Cargo.toml; };
  cargoPackage = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).package;

  # crane's default filter keeps only Rust and Cargo files: add the SQL migrations
  # (embedded by sqlx::migrate!), the offline query data (.sqlx, SQLX_OFFLINE) and
  # anything the integration tests read from tests/. Flakes only see git-tracked files.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources ../.)
      ../migrations
      (lib.fileset.maybeMissing ../.sqlx)
      (lib.fileset.maybeMissing ../tests)
    ];
  };

  # The C code in the graph (ring; mimalloc on musl) is compiled by the cc crate, which for a
  # musl target looks for `<arch>-linux-musl-gcc` or `musl-gcc` and fails when neither exists.
  # Point it at nixpkgs' musl cross compiler of the same architecture. Linking stays with rustc's
  # default (the stdenv `cc` plus Rust's self-contained musl CRT), as in crane's example.
  muslCc =
    {
      x86_64-linux = pkgs.pkgsCross.musl64;
      aarch64-linux = pkgs.pkgsCross.aarch64-multiplatform-musl;
    }
    .${stdenv.hostPlatform.system}.stdenv.cc;
  muslCcEnv = lib.optionalAttrs isLinux {
    "CC_${muslTargetEnv}" = "${muslCc}/bin/${muslCc.targetPrefix}cc";
    "AR_${muslTargetEnv}" = "${muslCc.bintools}/bin/${muslCc.targetPrefix}ar";
  };

  commonArgs = {
    inherit src;
    inherit (crate) pname version;
    strictDeps = true;
    # Compile-time checked queries read .sqlx/ instead of a live database.
    SQLX_OFFLINE = "true";
    buildInputs = lib.optionals isDarwin [ pkgs.libiconv ];
  }
  // lib.optionalAttrs isLinux {
    CARGO_BUILD_TARGET = muslTarget;
    CARGO_BUILD_RUSTFLAGS = "-C target-feature=+crt-static";
  }
  // muslCcEnv;

  # Built once; reused by api, worker, clippy and nextest.
  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  mkBinary =
    name: description:
    craneLib.buildPackage (
      commonArgs
      // {
        inherit cargoArtifacts;
        pname = name;
        cargoExtraArgs = "--locked --bin ${name}";
        AI_AGENTS_GIT_REVISION = revision;
        # Tests run in checks.nextest (they need PostgreSQL and Redis).
        doCheck = false;

        # Smoke test of the installed binary: static, and `--version` works without any
        # configuration (contract section 3).
        doInstallCheck = true;
        nativeInstallCheckInputs = [ pkgs.file ];
        installCheckPhase = ''
          runHook preInstallCheck
          bin="$out/bin/${name}"
          file -L "$bin"
          if ! file -L "$bin" | grep -Eq 'static(ally|-pie) linked'; then
            echo "error: $bin is not statically linked" >&2
            exit 1
          fi
          reported="$("$bin" --version)"
          if [ "$reported" != "${name} ${crate.version}" ]; then
            echo "error: '$bin --version' printed '$reported', expected '${name} ${crate.version}'" >&2
            exit 1
          fi
          runHook postInstallCheck
        '';

        meta = {
          inherit description;
          homepage = cargoPackage.repository or null;
          license = lib.licenses.mit;
          mainProgram = name;
          platforms = lib.platforms.linux;
        };
      }
    );

  api = mkBinary "ai-agents-api" "ai-agents HTTP API (static ${muslTarget} binary)";
  worker = mkBinary "ai-agents-worker" "ai-agents job worker (static ${muslTarget} binary)";

  checks = {
    inherit api worker;

    fmt = craneLib.cargoFmt {
      inherit src;
      inherit (crate) pname version;
    };

    clippy = craneLib.cargoClippy (
      commonArgs
      // {
        inherit cargoArtifacts;
        cargoClippyExtraArgs = "--all-targets -- -D warnings";
      }
    );

    # All tests (unit and integration) against a real PostgreSQL 17 and Redis 7 started
    # inside the build, on loopback, as in crane's examples/end-to-end-testing.
    nextest = craneLib.cargoNextest (
      commonArgs
      // {
        inherit cargoArtifacts;
        cargoExtraArgs = "--locked";
        cargoNextestExtraArgs = "--no-tests=warn";
        doInstallCargoArtifacts = false;
        # The programs the tests spawn must be on the build's PATH: writeShellApplication puts
        # PostgreSQL and Redis on the PATH of its own script only. One entry per program, named
        # in its comment; .ci/check-nix.sh fails when a program the tests start is not listed.
        nativeBuildInputs = [
          devServices # dev-services: starts PostgreSQL 17 and Redis 7 for the whole run (preCheck)
          redis # redis-server: tests/it/helpers/outage.rs starts a Redis of its own (OwnRedis)
          pkgs.coreutils # kill: the tests send SIGTERM/SIGKILL to the binaries they start
        ];
        preCheck = ''
          if [ "$(id -u)" -eq 0 ]; then
            echo "error: the nextest check starts PostgreSQL, which refuses to run as root." >&2
            echo "Run it with Nix build users (a multi-user/daemon install, as on CI)." >&2
            exit 1
          fi
          # State in the build directory; ports away from the devShell defaults so that an
          # unsandboxed build does not collide with a developer's running services.
          export AI_AGENTS_DEV_DIR="$TMPDIR/ai-agents-dev"
          export AI_AGENTS_DEV_PG_PORT=55442
          export AI_AGENTS_DEV_REDIS_PORT=56389
          dev-services start
          # AI_AGENTS_DATABASE_URL (owner role), AI_AGENTS_APP_DATABASE_URL, AI_AGENTS_REDIS_URL
          eval "$(dev-services env)"
          # For #[sqlx::test] helpers; the query macros stay offline (SQLX_OFFLINE=true).
          export DATABASE_URL="$AI_AGENTS_DATABASE_URL"
        '';
        # On failure Nix ends the build's processes itself.
        postCheck = ''
          dev-services stop
        '';
      }
    );

    # The binaries must not drag anything (toolchain, glibc) into the images.
    static-closure =
      pkgs.runCommand "ai-agents-static-closure"
        {
          closures = map (drv: pkgs.closureInfo { rootPaths = [ drv ]; }) [
            api
            worker
          ];
        }
        ''
          for closure in $closures; do
            echo "closure:"; cat "$closure/store-paths"
            if [ "$(wc -l < "$closure/store-paths")" -ne 1 ]; then
              echo "error: a binary references other store paths (see above)" >&2
              exit 1
            fi
          done
          touch "$out"
        '';
  };
in
{
  inherit
    craneLib
    devToolchain
    crate
    cargoPackage
    cargoArtifacts
    api
    worker
    checks
    muslCcEnv
    ;
}
