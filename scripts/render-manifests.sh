#!/usr/bin/env bash
# Writes manifests/<example>.yaml: each kustomize example rendered to plain
# YAML, for users who apply files instead of overlays. tests/kustomize.rs
# fails when these are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
cp kustomize/base/rbac.yaml manifests/rbac.yaml
for dir in kustomize/examples/*/; do
  name=$(basename "$dir")
  {
    echo "# Rendered from kustomize/examples/$name by scripts/render-manifests.sh; do not edit."
    echo "# Apply: kubectl apply -f manifests/$name.yaml (change the passwords first)."
    kubectl kustomize "$dir"
  } > "manifests/$name.yaml"
done
