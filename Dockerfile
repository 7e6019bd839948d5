# Snakeway container image: build with the Rust toolchain, run on Debian slim as a non-root user.
#   docker build -t snakeway .
#   docker run --rm -p 8080:8080 snakeway
# The image serves /etc/snakeway/snakeway.toml (contrib/docker/snakeway.toml; mount your own
# over it; relative paths in it resolve against /etc/snakeway).
# Reload: `docker exec CONTAINER snakeway reload -c /etc/snakeway/snakeway.toml` (checks first,
# prints the new epoch or the refusal) or `docker kill --signal HUP CONTAINER`.
# Stop: SIGTERM drains for server.shutdown_grace_ms; give `docker stop -t` more than that.

# --- build -------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
# .git is not in the build context: pass the commit for `--version`
# (docker build --build-arg SNAKEWAY_COMMIT=$(git rev-parse --short HEAD) .).
ARG SNAKEWAY_COMMIT=unknown
ENV SNAKEWAY_COMMIT=${SNAKEWAY_COMMIT}
WORKDIR /src
# jemalloc, the binary's allocator, is built from C source with make (the slim image has gcc).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin snakeway \
 && install -m 0755 target/release/snakeway /usr/local/bin/snakeway

# --- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --home-dir /var/lib/snakeway --shell /usr/sbin/nologin snakeway \
 && install -d -o snakeway -g snakeway /var/lib/snakeway /var/cache/snakeway /run/snakeway
COPY --from=build /usr/local/bin/snakeway /usr/local/bin/snakeway
COPY public /etc/snakeway/public
COPY contrib/docker/snakeway.toml /etc/snakeway/snakeway.toml
# `nginx -t` for the image: a configuration that does not check fails the build.
RUN snakeway config check -c /etc/snakeway/snakeway.toml

USER snakeway
ENV SNAKEWAY_LOG=info XDG_CACHE_HOME=/var/cache/snakeway
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/snakeway"]
CMD ["serve", "-c", "/etc/snakeway/snakeway.toml"]
