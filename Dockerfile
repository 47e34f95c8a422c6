# syntax=docker/dockerfile:1
FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# Dependencies in a layer of their own, rebuilt only when Cargo.toml or Cargo.lock change: a
# stand-in crate with the same manifest compiles every dependency (OpenSSL, libpq and
# SQLite from source among them; perl and make are in the base image). Cargo wants a file
# for each target the manifest names, so each bench gets an empty stand-in too.
# `.cargo/config.toml` carries the bundled SQLite's compile-time options.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && grep -A1 '^\[\[bench\]\]' Cargo.toml | sed -n 's/^name = "\(.*\)"$/\1/p' \
       | while read -r bench; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked --bin carevault \
    && rm -rf src benches

# The sources. Their timestamps may be older than the stand-in's build, so the crate's own
# entry points are touched to make cargo compile the real thing.
COPY . .
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked --bin carevault

FROM debian:bookworm-slim
# ca-certificates follows the base image's Debian release and its security updates; a pinned
# version would vanish from the archive with the next point release and break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/carevault --create-home carevault
COPY --from=build /src/target/release/carevault /usr/local/bin/carevault
COPY --from=build /src/policies /etc/carevault/policies
USER 10001:10001
WORKDIR /var/lib/carevault
# The OpenSSL built into the binary (libpq's TLS to PostgreSQL) looks for CA certificates
# under /usr/local/ssl; point it at Debian's bundle so `sslrootcert=system` works.
ENV CAREVAULT_ADDR=0.0.0.0:8080 \
    CAREVAULT_DATA_DIR=/var/lib/carevault/data \
    CAREVAULT_POLICIES_DIR=/etc/carevault/policies \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_DIR=/etc/ssl/certs
EXPOSE 8080
# Reads the same configuration as `serve` (address, TLS certificate) from the environment.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/carevault", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/carevault"]
CMD ["serve"]
