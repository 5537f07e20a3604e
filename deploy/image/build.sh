#!/usr/bin/env bash
# Builds the container image `hearsay:latest` FROM scratch: the release binary plus the few
# shared libraries it links (no registry needed: nothing is pulled).
#   deploy/image/build.sh [tag]
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-hearsay:latest}
cargo build --release --locked -p hearsay
root=$(mktemp -d); trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/etc/hearsay" "$root/var/lib/hearsay" "$root/tmp"
chmod 1777 "$root/var/lib/hearsay" "$root/tmp"
cp target/release/hearsay "$root/bin/hearsay"
# The dynamic loader and every library ldd names, at the same paths.
for lib in $(ldd target/release/hearsay | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
echo "hearsay:x:65532:65532::/var/lib/hearsay:/bin/hearsay" > "$root/etc/passwd"
cp deploy/image/Dockerfile "$root/Dockerfile"
docker build -q -t "$tag" "$root"
echo "built $tag"
