#!/usr/bin/env bash
# Validates the deployment files offline: the Kubernetes manifests against the bundled
# OpenAPI schemas of kubernetes-validate (strict: unknown fields fail), and
# docker-compose.yml with `docker-compose config` (no engine needed).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/kubernetes-validate
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate
fi
"$venv/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp docker-compose.yml "$work/"
cp weixin-robot.env.example "$work/weixin-robot.env"
(cd "$work" && docker-compose -f docker-compose.yml config -q)
echo "docker-compose.yml: valid"
