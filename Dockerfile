# syntax=docker/dockerfile:1
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin carevault

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/carevault --create-home carevault
COPY --from=build /src/target/release/carevault /usr/local/bin/carevault
COPY --from=build /src/policies /etc/carevault/policies
USER 10001:10001
WORKDIR /var/lib/carevault
ENV CAREVAULT_ADDR=0.0.0.0:8080 \
    CAREVAULT_DATA_DIR=/var/lib/carevault/data \
    CAREVAULT_POLICIES_DIR=/etc/carevault/policies
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/carevault"]
CMD ["serve"]
