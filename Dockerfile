# graph-relay container image: build with cargo, run as a non-root user from a slim Debian.
# docker build -t graph-relay . && docker run -v graph-relay-spool:/var/spool/graph-relay \
#   -e GRAPH_RELAY_AUTH__TENANT_ID=… -e GRAPH_RELAY_AUTH__CLIENT_ID=… \
#   -e GRAPH_RELAY_AUTH__CLIENT_SECRET_FILE=/run/secrets/client-secret graph-relay
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The same command CI runs, so CI proves this stage builds.
RUN cargo build --release --locked -p graph-relay --bin graph-relay

FROM debian:bookworm-slim
# CA certificates for Entra and Graph; nothing else (no shell tools are needed at run time).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/spool/graph-relay \
    && chown 65532:65532 /var/spool/graph-relay \
    && chmod 0700 /var/spool/graph-relay
COPY --from=build /src/target/release/graph-relay /usr/local/bin/graph-relay
# Acknowledged mail waits here for Graph: mount persistent storage, never a throw-away volume.
VOLUME ["/var/spool/graph-relay"]
# Configured by environment; probes come from outside the container, so the operations
# endpoint listens on all addresses. SMTP stays on loopback for a sidecar (the pod shares it);
# set GRAPH_RELAY_SMTP__LISTEN=0.0.0.0:2525 to publish it, and restrict who can reach it.
ENV GRAPH_RELAY_QUEUE__DIR=/var/spool/graph-relay \
    GRAPH_RELAY_HTTP__LISTEN=0.0.0.0:9925 \
    GRAPH_RELAY_LOG__FORMAT=json
EXPOSE 2525 9925
USER 65532:65532
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/graph-relay", "health"]
ENTRYPOINT ["/usr/local/bin/graph-relay"]
CMD ["serve"]
