# syntax=docker/dockerfile:1
#
# nuki-exporter container image: built with the official Rust image, run on distroless (glibc, CA
# certificates, no shell, no package manager) as the unprivileged "nonroot" user (uid 65532).
#
#   docker build -t nuki-exporter:local .
#   docker run --rm -p 10180:10180 -p 10181:10181 nuki-exporter:local
#
# distroless publishes no version tags, so the base is pinned by digest: a rebuild gets the bytes
# that were reviewed. To update: docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot

FROM rust:1.95.0-slim-bookworm AS builder
WORKDIR /build
# Build the dependencies first so that a change in src/ does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
RUN touch src/*.rs \
 && cargo build --release --locked --bin nuki-exporter \
 && cp target/release/nuki-exporter /nuki-exporter \
 && mkdir /state

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
LABEL org.opencontainers.image.title="nuki-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Nuki smart-lock fleets (Nuki Web API webhooks)" \
      org.opencontainers.image.source="https://github.com/nuki-exporter/nuki-exporter" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /nuki-exporter /usr/local/bin/nuki-exporter
# The state file's directory (state.file), owned by the exporter's user so that a volume
# mounted here starts writable.
COPY --from=builder --chown=nonroot:nonroot /state /var/lib/nuki-exporter
USER nonroot:nonroot
# 10180: webhook listener (POST /webhook), 10181: metrics listener (GET /metrics)
EXPOSE 10180 10181
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/nuki-exporter", "healthcheck", "--url", "http://127.0.0.1:10180/-/ready"]
ENTRYPOINT ["/usr/local/bin/nuki-exporter"]
