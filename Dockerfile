# The Spillway image: one static-enough binary on a slim Debian base, run as a non-root
# user with nothing else in it but CA certificates (the AWS and Azure endpoints are
# reached over TLS verified against the system roots).
#
# NOT BUILT HERE: the development machine and CI have no container engine, so this file
# is reviewed, not exercised; `cargo build --release -p spillway` is what CI builds. Build
# it where an engine exists:
#   docker build -t <your-registry>/spillway:0.1.0 .
# and set the chart's image.repository / image.tag to what you pushed.

FROM rust:1.94.1-bookworm AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables (250 MB); the image gets the stripped binary
# (about 37 MB).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p spillway \
 && strip --strip-all target/release/spillway \
 && install -D -m 0755 target/release/spillway /out/spillway

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/spillway /usr/local/bin/spillway
# The chart's pods run as this user with a read-only root file system.
USER 65532:65532
EXPOSE 8443 9090 10250
ENTRYPOINT ["/usr/local/bin/spillway"]
CMD ["--help"]
