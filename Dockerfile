# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run from a slim Debian as a non-root user.
#
#   docker build -t tranche .
#   docker run -p 8080:8080 \
#     -e DATABASE_URL=postgres://user:pass@db:5432/tranche \
#     -e TRANCHE_ADMIN_TOKEN="$(openssl rand -hex 32)" \
#     -e TRANCHE_WEBHOOK_SECRET_KEYS="[k1:$(openssl rand -hex 32)]" \
#     -e TRANCHE_DNS_PROVIDER=route53 -e AWS_REGION=us-east-1 \
#     -e TRANCHE_METRICS_LISTEN=0.0.0.0:9464 -p 9464:9464 \
#     tranche
#
# Keep the admin token and the webhook secret keys: every node of a cluster needs the same ones
# (docs/production.md). The runtime image has no PostgreSQL binaries, so DATABASE_URL is
# required (the embedded database is for laptops and tests).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tranche \
 && cp target/release/tranche /usr/local/bin/tranche

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tranche --create-home tranche
COPY --from=build /usr/local/bin/tranche /usr/local/bin/tranche
USER 10001:10001
WORKDIR /var/lib/tranche
ENV TRANCHE_LISTEN=0.0.0.0:8080 \
    TRANCHE_LOG_FORMAT=json
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/tranche"]
CMD ["serve"]
