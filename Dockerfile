# syntax=docker/dockerfile:1
# Warren images, one target each:
#   docker build --target operator -t warren-operator:0.1.0 .
#   docker build --target worker   -t warren-worker:0.1.0 .
# and, for the end-to-end tests on a real cluster, the worker image with their helpers:
#   docker build --target worker-e2e -t warren-worker:0.1.0-e2e .
# Both run as the non-root user 65532 (the uid the Helm chart enforces).

# The toolchain CI builds with (dependencies need at least 1.89).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build: both binaries, release profile, the committed Cargo.lock ------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds; the binaries are copied out of the
# cached target/ because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p warren-operator --bin warren-operator -p warren-worker --bin warren-worker \
 && mkdir -p /out \
 && cp target/release/warren-operator target/release/warren-worker /out/

# ---- operator: distroless (glibc, CA certificates, no shell) ---------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/warren-operator /usr/local/bin/warren-operator
USER 65532:65532
# /metrics, /healthz, /readyz (set WARREN_METRICS_ADDR=0.0.0.0:9464 in a pod; the chart does).
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/warren-operator"]

# ---- worker: debian-slim, because handlers are arbitrary commands (sh -c ..., python3 ...) ----------
# Build your handler's image FROM this one and add its runtime; the operator passes the handler
# as arguments after `--` (WorkerPool spec.workers.handler).
FROM debian:${DEBIAN_RELEASE}-slim AS worker
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 warren \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin warren
COPY --from=build /out/warren-worker /usr/local/bin/warren-worker
USER 65532:65532
WORKDIR /tmp
# tini reaps the handler processes' orphans and forwards SIGTERM to warren-worker.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/warren-worker"]

# ---- worker-e2e: the worker image plus the end-to-end tests' binaries -----------------------------
# The tests' handlers call warren-e2e-probe (their side channel, through the broker) and some
# pools run warren-bench's SDK worker; on a real cluster they must be in the pods' image
# (WARREN_E2E_POD_BIN_DIR, default /usr/local/bin). Built only for this target.
FROM build AS build-e2e
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p warren-e2e --bin warren-e2e-probe --bin warren-bench \
 && cp target/release/warren-e2e-probe target/release/warren-bench /out/

FROM worker AS worker-e2e
COPY --from=build-e2e /out/warren-e2e-probe /out/warren-bench /usr/local/bin/

# ---- default: `docker build .` without --target builds the worker image -------------------------
FROM worker
