#!/bin/bash
# Builds the container image of the cluster-side binaries (peerpod-webhook and
# peerpod-vm-advertiser) without a container engine and without pulling a base image: the root
# is assembled from the binaries, the shared libraries ldd names for them (from this Debian
# system), Debian's CA bundle and a passwd/group with the non-root user 65532; umoci packs it
# into an OCI image layout and skopeo copies that into a docker-archive tarball. See
# docs/webhook.md ("The container image").
#
#   webhook/image/build.sh [--no-cargo]
#
# Outputs in $WEBHOOK_IMAGE_OUT (default target/webhook-image):
#   oci/                     the OCI image layout, tag $WEBHOOK_IMAGE_TAG (skopeo: oci:<dir>:<tag>)
#   peerpod-webhook.tar      docker-archive, named peerpod-webhook:<tag> (docker/podman load)
#   image.env                DIGEST=, SIZE_BYTES= (compressed layer + config + manifest) for scripts
#
# Environment:
#   WEBHOOK_IMAGE_BIN_DIR    where the two binaries are taken from (default target/release, built
#                            here with `cargo build --release` unless --no-cargo)
#   WEBHOOK_IMAGE_OUT        output directory (its oci/, rootfs/ and tarball are replaced)
#   WEBHOOK_IMAGE_TAG        the tag (default latest)
#   SOURCE_DATE_EPOCH        every timestamp in the image (default: the last commit's time, or 0);
#                            the same binaries and libraries give the same digest
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=${WEBHOOK_IMAGE_OUT:-$TARGET/webhook-image}
BIN_DIR=${WEBHOOK_IMAGE_BIN_DIR:-$TARGET/release}
TAG=${WEBHOOK_IMAGE_TAG:-latest}
NAME=peerpod-webhook
BINARIES=(peerpod-webhook peerpod-vm-advertiser)
# The user the manifests run as (runAsUser: 65532), distroless's "nonroot".
USER_ID=65532
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { printf '[webhook-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is missing: apt-get install $2 (or run make deps)"; }

CARGO=1
for arg in "$@"; do
    case $arg in
    --no-cargo) CARGO=0 ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $arg (see --help)" ;;
    esac
done

need umoci umoci
need skopeo skopeo
need ldd libc-bin
need strip binutils
[ "$(id -u)" = 0 ] || die "run as root: the root's files are chowned (root, and $USER_ID for its home) and umoci keeps owners"
[ -f "$CA_BUNDLE" ] || die "$CA_BUNDLE is missing: apt-get install ca-certificates"
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "WEBHOOK_IMAGE_TAG '$TAG' is not a valid tag"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)
fi
[[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH '$SOURCE_DATE_EPOCH' is not a number of seconds"
export SOURCE_DATE_EPOCH
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

if [ "$CARGO" = 1 ]; then
    log "cargo build --release -p peerpod-webhook"
    (cd "$REPO" && cargo build --release --locked -p peerpod-webhook)
fi
for b in "${BINARIES[@]}"; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: build it (cargo build --release -p peerpod-webhook) or set WEBHOOK_IMAGE_BIN_DIR"
done

mkdir -p "$OUT"
IMAGE=$OUT/oci:$TAG
BUNDLE=$OUT/bundle
ROOT=$BUNDLE/rootfs
rm -rf "$BUNDLE" "$OUT/oci" "$OUT/$NAME.tar" "$OUT/image.env"
# An empty image unpacked into a bundle: its rootfs/ is filled below and repacked as the one
# layer (repack writes the root as "./", as image layers usually do).
umoci init --layout "$OUT/oci"
umoci new --image "$IMAGE"
umoci unpack --image "$IMAGE" "$BUNDLE" >/dev/null
mkdir -p "$ROOT"/{etc/ssl/certs,tmp,home/nonroot}
chmod 0755 "$ROOT" "$ROOT"/etc "$ROOT"/etc/ssl "$ROOT"/etc/ssl/certs "$ROOT"/home
chmod 1777 "$ROOT"/tmp

log "root: ${BINARIES[*]} (stripped), their shared libraries, CA bundle, passwd"
for b in "${BINARIES[@]}"; do
    install -m 0755 "$BIN_DIR/$b" "$ROOT/$b"
    strip --strip-all "$ROOT/$b"
done

# Every library the dynamic linker will load, at the path ldd resolves it to (the loader at its
# absolute path, as the binaries' PT_INTERP names it). Symlinks are followed: the image holds
# regular files at those paths. A "not found" library stops the build.
libs=()
for b in "${BINARIES[@]}"; do
    out=$(ldd "$ROOT/$b" 2>&1) || { [[ $out == *"not a dynamic executable"* ]] && continue; die "ldd $b: $out"; }
    [[ $out == *"not found"* ]] && die "ldd $b: a library is missing: $out"
    while read -r path; do libs+=("$path"); done < <(
        printf '%s\n' "$out" | sed -n -e 's/^.*=> \(\/[^ ]*\) (0x.*$/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (0x.*$/\1/p'
    )
done
for lib in $(printf '%s\n' "${libs[@]}" | sort -u); do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
    chmod 0755 "$ROOT$lib"
done
# Directories created for libraries get the usual mode whatever the umask.
find "$ROOT" -mindepth 1 -type d ! -path "$ROOT/tmp" -exec chmod 0755 {} +

install -m 0644 "$CA_BUNDLE" "$ROOT$CA_BUNDLE"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$USER_ID" "$USER_ID" >"$ROOT/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$USER_ID" >"$ROOT/etc/group"
chmod 0644 "$ROOT/etc/passwd" "$ROOT/etc/group"
chown -R 0:0 "$ROOT"
chown "$USER_ID:$USER_ID" "$ROOT/home/nonroot"
chmod 0700 "$ROOT/home/nonroot"
find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

log "umoci: OCI layout $IMAGE (created $CREATED)"
umoci repack --image "$IMAGE" --history.created "$CREATED" --history.author peerpod-guest \
    --history.created_by "webhook/image/build.sh" --history.comment "binaries, libraries, CA bundle, passwd" \
    "$BUNDLE"
rm -rf "$BUNDLE"
umoci config --image "$IMAGE" --no-history --created "$CREATED" --author peerpod-guest \
    --architecture amd64 --os linux \
    --config.user "$USER_ID:$USER_ID" \
    --config.entrypoint "/$NAME" \
    --config.exposedports 9443/tcp \
    --config.workingdir / \
    --config.env PATH=/ \
    --config.label "org.opencontainers.image.title=$NAME" \
    --config.label "org.opencontainers.image.description=peer-pods admission webhook (/peerpod-webhook) and VM capacity advertiser (/peerpod-vm-advertiser)" \
    --config.label "org.opencontainers.image.created=$CREATED"
umoci gc --layout "$OUT/oci"

log "skopeo: docker-archive $OUT/$NAME.tar ($NAME:$TAG)"
skopeo copy --quiet "oci:$OUT/oci:$TAG" "docker-archive:$OUT/$NAME.tar:$NAME:$TAG"
touch -d "@$SOURCE_DATE_EPOCH" "$OUT/$NAME.tar"

# The manifest's digest and the bytes a registry stores (manifest + config + layers).
manifest=$(grep -o '"digest":"sha256:[0-9a-f]*"' "$OUT/oci/index.json" | head -1 | cut -d'"' -f4)
size=$(du -cb "$OUT/oci/blobs/sha256/"* | tail -1 | cut -f1)
printf 'DIGEST=%s\nSIZE_BYTES=%s\nTAG=%s\n' "$manifest" "$size" "$TAG" >"$OUT/image.env"
log "done: $IMAGE digest $manifest, $size bytes; $OUT/$NAME.tar"
