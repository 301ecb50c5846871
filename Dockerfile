# Sluice's images: sluice-gateway, sluice-sidecar and sluice-sim, each on a small Debian
# runtime (non-root user 10001, a HEALTHCHECK, the binary as entrypoint).
#
# The usual way (compiles inside ${RUST_IMAGE}; needs BuildKit, Docker's default builder):
#   docker build --target gateway -t sluice/gateway .
#   docker build --target sidecar -t sluice/sidecar .
#   docker build --target sim     -t sluice/sim .
# With binaries compiled on the host (scripts/build-images.sh, on a machine without a
# registry): the *-prebuilt targets, built from a context that holds bin/sluice-*.
#
# The *-prebuilt stages come before the builder on purpose: the classic builder (no
# BuildKit) builds every stage up to its target, so a prebuilt target never needs
# ${RUST_IMAGE}. BuildKit builds only the stages a target uses.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- runtime: what every image shares ----
FROM ${RUNTIME_IMAGE} AS runtime
# curl is the healthcheck; the local base image (scripts/build-images.sh) already has it.
RUN set -eu; \
    if ! command -v curl >/dev/null 2>&1; then \
      apt-get update; \
      apt-get install -y --no-install-recommends ca-certificates curl; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 sluice; \
    useradd --system --uid 10001 --gid sluice --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin sluice; \
    mkdir -p /etc/sluice
ENV SLUICE_CONFIG=/etc/sluice/sluice.toml \
    SLUICE_LOG=info \
    NO_COLOR=1
WORKDIR /
USER 10001:10001

# ---- images from host-built binaries (scripts/build-images.sh) ----
FROM runtime AS sim-prebuilt
COPY bin/sluice-sim /usr/local/bin/sluice-sim
EXPOSE 9000
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9000/health || exit 1
ENTRYPOINT ["sluice-sim"]
CMD ["--listen", "0.0.0.0:9000"]

FROM runtime AS gateway-prebuilt
COPY bin/sluice-gateway /usr/local/bin/sluice-gateway
ENV SLUICE_SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["sluice-gateway"]
CMD ["--config", "/etc/sluice/sluice.toml"]

FROM runtime AS sidecar-prebuilt
COPY bin/sluice-sidecar /usr/local/bin/sluice-sidecar
# The sidecar's contract names SLUICE_SIDECAR_LISTEN; the configuration's override of
# sidecar.listen is SLUICE_SIDECAR__LISTEN. Both say the same.
ENV SLUICE_SIDECAR_LISTEN=0.0.0.0:8081 \
    SLUICE_SIDECAR__LISTEN=0.0.0.0:8081
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8081/healthz || exit 1
ENTRYPOINT ["sluice-sidecar"]
CMD ["--config", "/etc/sluice/sluice.toml"]

# ---- the usual build: compile inside ${RUST_IMAGE} ----
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN set -eu; \
    pkgs="-p sluice-gateway -p sluice-sim"; \
    if [ -d crates/sidecar ]; then pkgs="$pkgs -p sluice-sidecar"; fi; \
    cargo build --release --locked $pkgs; \
    mkdir -p /out; \
    for b in sluice-gateway sluice-sim sluice-sidecar; do \
      if [ -f "target/release/$b" ]; then cp "target/release/$b" /out/; fi; \
    done

FROM runtime AS sim
COPY --from=builder /out/sluice-sim /usr/local/bin/sluice-sim
EXPOSE 9000
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9000/health || exit 1
ENTRYPOINT ["sluice-sim"]
CMD ["--listen", "0.0.0.0:9000"]

FROM runtime AS sidecar
COPY --from=builder /out/sluice-sidecar /usr/local/bin/sluice-sidecar
# The sidecar's contract names SLUICE_SIDECAR_LISTEN; the configuration's override of
# sidecar.listen is SLUICE_SIDECAR__LISTEN. Both say the same.
ENV SLUICE_SIDECAR_LISTEN=0.0.0.0:8081 \
    SLUICE_SIDECAR__LISTEN=0.0.0.0:8081
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8081/healthz || exit 1
ENTRYPOINT ["sluice-sidecar"]
CMD ["--config", "/etc/sluice/sluice.toml"]

# The last stage is the default target: `docker build .` gives the gateway.
FROM runtime AS gateway
COPY --from=builder /out/sluice-gateway /usr/local/bin/sluice-gateway
ENV SLUICE_SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["sluice-gateway"]
CMD ["--config", "/etc/sluice/sluice.toml"]
