# syntax=docker/dockerfile:1
# clamgate container image: build with the Rust toolchain, run on a slim Debian as a non-root user.
#
#   docker build -t clamgate .
#   docker run --network host -v "$PWD/clamgate.toml:/etc/clamgate/clamgate.toml:ro" clamgate
#
# clamgate.toml's defaults listen on loopback (fine with --network host, as in docker-compose.yml);
# with a bridge network set CLAMGATE_LISTEN_GRPC_ADDR=0.0.0.0:50051, publish only that port, and
# mount a token file (CLAMGATE_LISTEN_GRPC_TOKEN_FILE) and TLS files (CLAMGATE_LISTEN_GRPC_TLS_*):
# without them anyone who reaches the port can pose as Envoy and write verdicts.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# build.rs compiles proto/ with protox (pure Rust): no protoc needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# Cache mounts keep the crate registry and build artefacts between builds; the binary is copied
# out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin clamgate \
    && install -D -m 0755 target/release/clamgate /out/clamgate

FROM debian:bookworm-slim
# ca-certificates: rediss:// (Redis over TLS) verifies the server's certificate.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 clamgate \
    && useradd --system --uid 10001 --gid clamgate --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin clamgate
COPY --from=builder /out/clamgate /usr/local/bin/clamgate
COPY clamgate.toml /etc/clamgate/clamgate.toml
USER 10001:10001
# gRPC (ext_proc, Scan API, health) and the admin HTTP listener (/healthz, /readyz, /metrics).
EXPOSE 50051 9090
# glibc gives each thread that frees memory an arena of its own and keeps what it freed: held
# bodies' 64 KiB pieces, freed on the blocking threads that write temp files, took clamgate's peak
# RSS to ~200 MiB during a 256 MiB upload; two arenas keep it near 100 MiB at no measured cost.
ENV MALLOC_ARENA_MAX=2
ENTRYPOINT ["clamgate"]
CMD ["serve", "--config", "/etc/clamgate/clamgate.toml"]
