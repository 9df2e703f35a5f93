# The published registry-cache image: release.yml builds it from the repository root for
# linux/amd64 and linux/arm64 and pushes it to GHCR. The registry role runs it when
# registry_image is set; by default the role builds the same image on the cache host from
# roles/registry/templates/Dockerfile.j2 (the tested path).
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}

# Debian 13's docker-registry is CNCF Distribution 2.8.3: the registry that serves is the
# registry that collects garbage.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       docker-registry python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/docker-registry /usr/local/bin/registry

# The janitor: a stdlib-only package, no pip in the image.
COPY files/janitor/src/registry_janitor /usr/lib/python3/dist-packages/registry_janitor
COPY roles/registry/files/registry-janitor /usr/local/bin/registry-janitor
RUN python3 -m compileall -q /usr/lib/python3/dist-packages/registry_janitor \
    && registry --version \
    && registry-janitor --version

# VERSION is registry_janitor.__version__ (release.yml checks the tag against it).
ARG VERSION=dev
LABEL org.opencontainers.image.title="registry-cache" \
      org.opencontainers.image.description="CNCF Distribution 2.8.3 registry with the registry-cache janitor" \
      org.opencontainers.image.version="${VERSION}"

# Compose runs it as registry_uid:registry_gid; this is the default for plain docker run.
USER 10000:10000
EXPOSE 5000
CMD ["registry", "serve", "/etc/docker/registry/config.yml"]
