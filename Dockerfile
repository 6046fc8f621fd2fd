# syntax=docker/dockerfile:1
# The Spillway image: one binary on a slim Debian base, run as a non-root user with
# nothing else in it but CA certificates (the AWS and Azure endpoints are reached over
# TLS verified against the system roots).
#
# Multi-platform: the build stage runs on the builder's own platform and cross-compiles
# for the target one (amd64 or arm64), so an arm64 image needs no emulation:
#   docker buildx build --platform linux/amd64,linux/arm64 -t <your-registry>/spillway:0.1.0 .
# Without a container engine, `make image` assembles the same image as an OCI archive
# from a local build (deploy/image/build-oci) and CI runs it under runc.
#
# The toolchain below is the workspace's rust-version (Cargo.toml, the MSRV), which CI
# checks against the lockfile and this line (spillway/tests/msrv.rs).

FROM --platform=$BUILDPLATFORM rust:1.94.1-bookworm AS build
ARG TARGETARCH
RUN case "$TARGETARCH" in \
      amd64) echo "x86_64-unknown-linux-gnu x86_64-linux-gnu amd64" > /target ;; \
      arm64) echo "aarch64-unknown-linux-gnu aarch64-linux-gnu arm64" > /target ;; \
      *) echo "unsupported TARGETARCH '$TARGETARCH' (amd64 or arm64)" >&2; exit 1 ;; \
    esac \
 && read -r triple gnu debian < /target \
 && apt-get update \
 && apt-get install -y --no-install-recommends "gcc-$gnu" "libc6-dev-$debian-cross" \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$triple"
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
WORKDIR /src
COPY . .
# The release profile keeps line tables (250 MB); the image gets the stripped binary
# (about 37 MB).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=spillway-target-$TARGETARCH \
    read -r triple gnu debian < /target \
 && cargo build --release --locked -p spillway --target "$triple" \
 && "$gnu-strip" --strip-all "target/$triple/release/spillway" \
 && install -D -m 0755 "target/$triple/release/spillway" /out/spillway

FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="spillway" \
      org.opencontainers.image.description="Bursts opted-in Kubernetes Deployments onto AWS Fargate and Azure Container Instances" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/spillway /usr/local/bin/spillway
# The chart's pods run as this user with a read-only root file system.
USER 65532:65532
EXPOSE 8443 9090 10250
ENTRYPOINT ["/usr/local/bin/spillway"]
CMD ["--help"]
