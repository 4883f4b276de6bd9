# Two-stage build: compile in the Rust image, run in a slim Debian with CA certificates only.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p graph-relay --bin graph-relay

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/spool/graph-relay \
    && chown 65532:65532 /var/spool/graph-relay \
    && chmod 0700 /var/spool/graph-relay
COPY --from=build /src/target/release/graph-relay /usr/local/bin/graph-relay
# The spool must outlive the container: acknowledged mail waits here for Graph.
VOLUME ["/var/spool/graph-relay"]
ENV GRAPH_RELAY_QUEUE__DIR=/var/spool/graph-relay
# Loopback by default (a sidecar shares the pod's network namespace). To publish the port, set
# GRAPH_RELAY_SMTP__LISTEN=0.0.0.0:2525 and restrict who can reach it.
EXPOSE 2525
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/graph-relay"]
CMD ["serve"]
