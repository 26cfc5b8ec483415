#!/usr/bin/env bash
# Build a Debian bookworm base image with Python for the Dockerfile's PYTHON_IMAGE, from
# Debian's package mirror alone: for machines that reach no container registry (CI here).
#
#   deploy/base-image.sh            # prints the image name, e.g. localhost/gateproxy-base:bookworm-1a2b3c4d5e6f
#   podman build --build-arg PYTHON_IMAGE="$(deploy/base-image.sh)" ...
#
# Needs root, debootstrap and podman. The tag carries a hash of this script, so that the
# image is built once per machine and again whenever the recipe changes; everything but
# the name goes to stderr. MIRROR overrides the Debian mirror.
set -euo pipefail

MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# python3-venv brings ensurepip (pip for the build stage's own venv); no python3-pip.
PACKAGES=python3,python3-venv
RECIPE=$(sha256sum "$0" | cut -c1-12)
IMAGE=localhost/gateproxy-base:$SUITE-$RECIPE

if podman image exists "$IMAGE"; then
  echo "$IMAGE exists: not rebuilding it" >&2
  echo "$IMAGE"
  exit 0
fi

root=$(mktemp -d /var/tmp/gateproxy-base.XXXXXX)
chmod 755 "$root"  # apt in the chroot downloads as _apt
trap 'rm -rf "$root"' EXIT
started=$(date +%s)

debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2

# Security and point-release updates: debootstrap installs the release as first published.
cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
chroot "$root" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get upgrade -y -qq >&2

# What a container never reads: package lists and caches, manuals, translations, and
# documentation other than the copyright files (which Debian's licences ask us to keep).
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
find "$root/usr/share/doc" -type f ! -name copyright -delete
find "$root/usr/share/doc" -type d -empty -delete

tar --numeric-owner --xattrs -C "$root" -c . \
  | podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE" >&2
echo "built $IMAGE in $(( $(date +%s) - started )) s" >&2
echo "$IMAGE"
