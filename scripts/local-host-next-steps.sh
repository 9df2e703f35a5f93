#!/bin/sh
# Printed at the end of `make up`: where the local cache host's registry listens and how to
# try it. The same commands are in the README ("Two commands", "Operations").
cat <<'EOF'

The local cache host is up: container registry-cache-local, its registry on
http://localhost:5000 (published on 127.0.0.1 only, no authentication).

Push a first image; no other registry is needed, docker import makes one from a tarball:
  echo hello > /tmp/hello.txt && tar -C /tmp -c hello.txt | docker import - localhost:5000/team/hello:1
  docker push localhost:5000/team/hello:1
  curl -s localhost:5000/v2/team/hello/tags/list

Sweep:
  make gc DRY_RUN=1    # what a sweep would delete
  make gc              # one sweep now

Ansible by hand: . .venv/bin/activate, then for example
  ansible registry_cache -i inventories/local -b -m command -a "systemctl start registry-janitor.service"
A shell on the cache host: docker exec -it registry-cache-local bash
Remove it: make down
EOF
