# The sidecar for LIFEBOAT_POSTGRES_MODE=logical: it runs pg_dump and
# pg_restore, so it needs PostgreSQL's client tools of the server's major
# version (or newer). Physical mode (the default) uses the scratch image.
#   docker build -f images/sidecar-postgres.Dockerfile --build-arg PG_MAJOR=17 \
#     -t lifeboat-sidecar:0.1.0-pg17 .
ARG PG_MAJOR=17
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu -p lifeboat-sidecar

FROM postgres:${PG_MAJOR}
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/lifeboat-sidecar /usr/local/bin/lifeboat-sidecar
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lifeboat-sidecar"]
CMD ["run"]
