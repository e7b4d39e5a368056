# OCI images (docker-archive tarballs) with dockerTools.buildLayeredImage: the static
# binary, CA certificates and an /etc/passwd entry for the numeric user, nothing else:
# no shell, no package manager. `created` stays at 1970 so the images are reproducible.
{
  pkgs,
  api,
  worker,
  # crate version from Cargo.toml: the image tag and the version label
  version,
  # git revision of the flake source: self.rev, or self.dirtyRev ("<last commit>-dirty") for a
  # tree with uncommitted changes
  revision,
  # Cargo.toml [package] table (repository, description)
  cargoPackage,
}:
let
  inherit (pkgs) dockerTools lib;

  uid = 65532;
  user = "${toString uid}:${toString uid}";

  # /etc/passwd and /etc/group with root, nobody and the app user: sqlx's default Postgres
  # user name and similar lookups resolve the uid to a name instead of failing.
  nss = pkgs.fakeNss.override {
    extraPasswdLines = [ "nonroot:x:${toString uid}:${toString uid}:ai-agents:/var/empty:/sbin/nologin" ];
    extraGroupLines = [ "nonroot:x:${toString uid}:" ];
  };

  seconds = s: s * 1000000000; # Docker's Healthcheck durations are nanoseconds

  mkImage =
    {
      name,
      package,
      title,
      extraConfig ? { },
    }:
    dockerTools.buildLayeredImage {
      inherit name;
      tag = version;
      # Each entry is linked into / of the image: /bin/<name>, /etc/ssl/certs/…, /etc/passwd.
      contents = [
        package
        dockerTools.caCertificates
        nss
      ];
      config = {
        User = user;
        Entrypoint = [ "/bin/${name}" ];
        Env = [ "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt" ];
        Labels = {
          "org.opencontainers.image.title" = title;
          "org.opencontainers.image.description" = cargoPackage.description or title;
          "org.opencontainers.image.source" = cargoPackage.repository or "";
          "org.opencontainers.image.version" = version;
          "org.opencontainers.image.revision" = revision;
          "org.opencontainers.image.licenses" = cargoPackage.license or "";
        };
      }
      // extraConfig;
    };
in
{
  api = mkImage {
    name = "ai-agents-api";
    package = api;
    title = "ai-agents API";
    extraConfig = {
      ExposedPorts."8000/tcp" = { };
      # No shell or curl in the image: the binary checks its own /health.
      Healthcheck = {
        Test = [
          "CMD"
          "/bin/ai-agents-api"
          "healthcheck"
        ];
        Interval = seconds 15;
        Timeout = seconds 5;
        StartPeriod = seconds 10;
        Retries = 3;
      };
    };
  };

  # The worker has no liveness command (`ai-agents-worker ping` is end to end, it needs a
  # running worker and Redis), so no Healthcheck; Kubernetes watches the process.
  worker = mkImage {
    name = "ai-agents-worker";
    package = worker;
    title = "ai-agents worker";
  };
}
