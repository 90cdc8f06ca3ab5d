# syntax=docker/dockerfile:1
# tokensync: a static binary on a distroless, non-root base image.
#
#   docker build -t ghcr.io/tokensync/tokensync:0.1.0 .
#
# The binary is built for x86_64-unknown-linux-musl: statically linked, TLS through rustls
# (no OpenSSL), so the runtime image needs no libc and no shell.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Every target Cargo.toml declares must exist, or cargo refuses the manifest.
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin tokensync \
 && cp target/x86_64-unknown-linux-musl/release/tokensync /tokensync

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /tokensync /tokensync
# 65532 is distroless's "nonroot"; the Deployment also sets runAsNonRoot and runAsUser.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/tokensync"]
CMD ["controller"]
