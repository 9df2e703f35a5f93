# The registry-cache image: Debian's docker-registry (CNCF Distribution 2.8.3) plus the
# janitor. The one Dockerfile of the project, used two ways with the same build context
# layout (paths relative to the repository root):
# - release.yml builds it from the repository root for linux/amd64 and linux/arm64 and
#   pushes it to GHCR (the registry role runs that image when registry_image is set);
# - by default the registry role copies this file and what it COPYs to
#   registry_project_dir/build on the cache host and builds it there (what the tests run),
#   passing as build arguments the settings that differ: registry_base_image,
#   registry_image_packages, registry_uid/registry_gid and the janitor's version.
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}

# The registry that serves is the registry that collects garbage. python3-boto3: the
# janitor on a bucket (registry_storage: s3); the role's own builds add it only then.
# The base's own packages are upgraded too: a base image loaded from an archive (or pulled
# long ago) would otherwise keep its libraries as they were, whatever a rebuild fetches
# (registry-cache-image-refresh rebuilds without cache when Debian has updates).
ARG PACKAGES="docker-registry python3 ca-certificates python3-boto3"
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${PACKAGES} \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/docker-registry /usr/local/bin/registry

# The janitor: a stdlib-only package, no pip in the image; byte-compiled now because at run
# time the code is read-only for the service user.
COPY files/janitor/src/registry_janitor /usr/lib/python3/dist-packages/registry_janitor
COPY roles/registry/files/registry-janitor /usr/local/bin/registry-janitor
RUN python3 -m compileall -q /usr/lib/python3/dist-packages/registry_janitor \
    && registry --version \
    && registry-janitor --version

# VERSION is registry_janitor.__version__ (release.yml checks the tag against it; the role
# reads it from the sources it copies).
ARG VERSION=dev
LABEL org.opencontainers.image.title="registry-cache" \
      org.opencontainers.image.description="CNCF Distribution 2.8.3 registry with the registry-cache janitor" \
      org.opencontainers.image.version="${VERSION}"

# Compose runs it as registry_uid:registry_gid anyway; this is the default for docker run.
ARG REGISTRY_UID=10000
ARG REGISTRY_GID=10000
USER ${REGISTRY_UID}:${REGISTRY_GID}
EXPOSE 5000
CMD ["registry", "serve", "/etc/docker/registry/config.yml"]
