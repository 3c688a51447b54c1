#!/bin/bash
# Builds the pod VM disk image from Debian packages (see docs/podvm-image.md).
#
#   podvm-image/build.sh [--no-cargo]
#
# Inputs: the binaries of the `podvm` cargo profile (release, built for small code; built here
# with cargo unless --no-cargo), the units and files of
# podvm/etc, Debian bookworm packages (mmdebstrap; downloads cached under target/podvm-image/).
# Outputs in target/podvm-image/out/: podvm.qcow2, podvm.vhd (fixed size, for Azure), the UKI
# podvm.efi (also on the disk's ESP as EFI/BOOT/BOOTX64.EFI), vmlinuz + initrd.img + cmdline for
# direct kernel boot, roothash, and image.env (key=value facts the QEMU harness reads).
#
# Environment: PODVM_SCRATCH_MB (trusted-store partition, default 256), PODVM_MIRROR (default
# http://deb.debian.org/debian), PODVM_CARGO_NICE (default 10), PODVM_BIN_DIR (where the
# binaries are taken from with --no-cargo; default target/podvm), PODVM_SB_KEY and PODVM_SB_CERT
# (sign the UKI for Secure Boot: an unencrypted PEM key and its PEM certificate).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
WORK=$TARGET/podvm-image
OUT=$WORK/out
CACHE=$WORK/apt-cache
SCRATCH_MB=${PODVM_SCRATCH_MB:-256}
MIRROR=${PODVM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
NICE=${PODVM_CARGO_NICE:-10}
BIN_DIR=${PODVM_BIN_DIR:-$TARGET/podvm}
STUB=/usr/lib/systemd/boot/efi/linuxx64.efi.stub

# The image's packages: systemd as init, udev + kmod to load drivers, what the units and the
# binaries call (ip, iptables, cryptsetup, mkfs.ext4, mount), libseccomp for the agent.
PACKAGES=(systemd systemd-sysv udev kmod iproute2 iptables cryptsetup-bin e2fsprogs libseccomp2 ca-certificates
    mount util-linux)
# Drivers the initramfs loads before it opens the verity root: virtio (QEMU) and Hyper-V (Azure)
# disks, device-mapper verity.
INITRD_MODULES=(virtio_pci virtio_blk virtio_scsi hv_vmbus hv_storvsc sd_mod dm_verity)
# Binaries copied to /usr/local/bin, with the cargo package that builds each.
BINARIES=(kata-agent attestation-agent confidential-data-hub api-server-rest process-user-data
    azure-ready agent-protocol-forwarder)
CARGO_PACKAGES=(-p kata-agent -p attestation-agent -p confidential-data-hub -p peerpod-provision
    -p peerpod-forwarder)
# Partition type GUIDs (UEFI spec and the Discoverable Partitions Specification).
GUID_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
GUID_ROOT=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709
GUID_VERITY=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5
GUID_DATA=0FC63DAF-8483-4772-8E79-3D69D8477DE4

log() { printf '[podvm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is missing: apt-get install $2 (or run make deps)"; }

need mmdebstrap mmdebstrap
need veritysetup cryptsetup-bin
need qemu-img qemu-utils
need mkfs.ext4 e2fsprogs
need mkfs.vfat dosfstools
need mcopy mtools
need sfdisk fdisk
need cpio cpio
need objcopy binutils
need busybox busybox-static
[ -f "$STUB" ] || die "$STUB is missing: apt-get install systemd-boot-efi"
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap's root mode and file ownership in the image)"

# Secure Boot signing key and certificate (PODVM_SB_KEY, PODVM_SB_CERT: both or neither), checked
# before anything is built: the key readable without a pass phrase, the certificate X.509 and
# the key's own.
SB_SIGNER=
if [ -n "${PODVM_SB_KEY:-}${PODVM_SB_CERT:-}" ]; then
    [ -n "${PODVM_SB_KEY:-}" ] && [ -n "${PODVM_SB_CERT:-}" ] \
        || die "set both PODVM_SB_KEY (the signing key) and PODVM_SB_CERT (its certificate), or neither"
    need sbsign sbsigntool
    need openssl openssl
    SB_PUB=$(openssl pkey -in "$PODVM_SB_KEY" -passin pass: -pubout 2>/dev/null) \
        || die "PODVM_SB_KEY: no private key readable without a pass phrase in $PODVM_SB_KEY (an encrypted key: decrypt it first, openssl pkey -in KEY -out PLAIN)"
    CERT_PUB=$(openssl x509 -in "$PODVM_SB_CERT" -noout -pubkey 2>/dev/null) \
        || die "PODVM_SB_CERT: $PODVM_SB_CERT is not a PEM X.509 certificate"
    [ "$SB_PUB" = "$CERT_PUB" ] \
        || die "PODVM_SB_CERT is not the certificate of PODVM_SB_KEY's key (their public keys differ)"
    SB_SIGNER=$(openssl x509 -in "$PODVM_SB_CERT" -noout -subject -nameopt RFC2253 \
        | sed 's/^subject=//')
    SB_SIGNER=${SB_SIGNER:-"(a certificate without a subject)"}
fi

mkdir -p "$WORK" "$OUT" "$CACHE/archives"

# 1. The programs, in the podvm profile (Cargo.toml: release with one codegen unit and fat LTO).
if [ "${1:-}" != --no-cargo ]; then
    log "cargo build --profile podvm ${CARGO_PACKAGES[*]} (nice -n $NICE)"
    (cd "$REPO" && nice -n "$NICE" cargo build --profile podvm --bins "${CARGO_PACKAGES[@]}")
    rm -f "$BIN_DIR/pause"
fi
# The sandbox container's pause binary, linked statically: /pause_bundle/rootfs holds nothing
# else. A dynamically linked one (a plain cargo build, e.g. the tests' target/debug) is rebuilt
# here with crt-static for the same profile.
PAUSE=$BIN_DIR/pause
if [ ! -x "$PAUSE" ] || readelf -d "$PAUSE" 2>/dev/null | grep -q NEEDED; then
    case "$(cd "$BIN_DIR" 2>/dev/null && pwd)" in
        "$TARGET"/debug) PROFILE=dev ;;
        "$TARGET"/*) PROFILE=${BIN_DIR##*/} ;;
        *) die "$PAUSE is missing or not static: build it with cargo rustc -p peerpod-pause --bin pause -- -C target-feature=+crt-static" ;;
    esac
    log "cargo rustc --profile $PROFILE -p peerpod-pause --bin pause (crt-static)"
    (cd "$REPO" && nice -n "$NICE" cargo rustc --profile "$PROFILE" -p peerpod-pause --bin pause \
        -- -C target-feature=+crt-static)
fi
if readelf -d "$PAUSE" | grep -q NEEDED; then
    die "$PAUSE is dynamically linked: the pause bundle needs it static"
fi

# 2. Base root filesystem, cached as a tarball keyed by everything that goes into it.
KVER_PKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1)
[ -n "$KVER_PKG" ] || die "apt-cache does not know linux-image-cloud-amd64: run apt-get update"
# Bump BASE_RECIPE when the mmdebstrap command below changes.
BASE_RECIPE=1
BASE_KEY=$(printf '%s\n' "$BASE_RECIPE" "$SUITE" "$MIRROR" "$KVER_PKG" "${PACKAGES[@]}" \
    | sha256sum | cut -c1-16)
BASE_TAR=$WORK/base-$BASE_KEY.tar
if [ ! -f "$BASE_TAR" ]; then
    log "mmdebstrap $SUITE minbase + ${PACKAGES[*]} + $KVER_PKG (cache: $CACHE)"
    # The kernel package is unpacked rather than installed: installing it would pull
    # initramfs-tools and build an initramfs the image never uses.
    (cd "$CACHE" && apt-get download -q "$KVER_PKG" >/dev/null)
    KDEB=$(ls -t "$CACHE"/"${KVER_PKG}"_*.deb | head -1)
    nice -n "$NICE" mmdebstrap --verbose --variant=minbase --format=tar --skip=essential/unlink \
        --include="$(IFS=,; echo "${PACKAGES[*]}")" \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
        --setup-hook="sync-in $CACHE/archives /var/cache/apt/archives/" \
        --customize-hook="sync-out /var/cache/apt/archives $CACHE/archives" \
        --customize-hook="dpkg-deb --fsys-tarfile '$KDEB' | tar -C \"\$1\" -x --keep-directory-symlink" \
        --customize-hook='for k in "$1"/lib/modules/*; do chroot "$1" /sbin/depmod -a "${k##*/}"; done' \
        --customize-hook='rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/* "$1"/usr/share/info/*' \
        "$SUITE" "$BASE_TAR.part" "$MIRROR"
    mv "$BASE_TAR.part" "$BASE_TAR"
    # Keep the newest two base tarballs.
    ls -t "$WORK"/base-*.tar | tail -n +3 | xargs -r rm -f
fi

# 3. The image's root: base + our binaries, units and files.
for b in "${BINARIES[@]}"; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: run without --no-cargo"
done
ROOT=$WORK/root
rm -rf "$ROOT" && mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$BASE_TAR"
KVER=$(ls "$ROOT/lib/modules" | head -1)
log "root filesystem: kernel $KVER"
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
install -d -m 0755 "$ROOT/usr/local/bin"
for b in "${BINARIES[@]}"; do
    # Stripped: a test-profile (debug) binary is mostly debug info.
    install -s -m 0755 "$BIN_DIR/$b" "$ROOT/usr/local/bin/$b"
done
# The sandbox (pause) container's bundle, as upstream's: the agent's image_guest_pull storage
# copies it instead of pulling registry.k8s.io/pause.
install -D -s -m 0755 "$PAUSE" "$ROOT/pause_bundle/rootfs/pause"
install -m 0644 "$REPO/podvm-image/pause_bundle/config.json" "$ROOT/pause_bundle/config.json"
cp -a "$REPO/podvm/etc/." "$ROOT/etc/"
cp -a "$REPO/podvm-image/rootfs/etc/." "$ROOT/etc/"
chroot "$ROOT" systemctl enable process-user-data.service process-user-data.path \
    attestation-agent.path confidential-data-hub.path kata-agent.path api-server-rest.path \
    scratch-storage.path systemd-networkd.service azure-ready.service podvm-resolv-conf.service \
    podvm-resolv-conf.path >/dev/null 2>&1 \
    || die "systemctl enable failed in the image root"
# The guest's own name lookups (image pulls, the KBS): podvm-resolv-conf.service writes the
# DHCP DNS servers there; the root is read-only.
ln -sfn ../run/systemd/resolve/resolv.conf "$ROOT/etc/resolv.conf"
# Production: no login on any console, no password for root.
chroot "$ROOT" systemctl mask getty@.service serial-getty@.service console-getty.service \
    getty-static.service >/dev/null 2>&1
# Nothing periodic: a pod VM lives as long as its pod, and its root is read-only.
chroot "$ROOT" systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer >/dev/null 2>&1
# Early units a pod VM has no use for, each a process start on the way to 15150 (under TCG about
# 0.1 s of CPU each, on the two vCPUs the path to udev and networkd needs): debugfs and tracefs
# (not exposed in production), fuse, binfmt_misc, pstore, the random seed (the read-only root
# can neither keep nor refresh one, and the same file in every VM must not seed anything), utmp
# and user sessions (no logins), the journal's flush (no journal, below), networkd's ip=
# generator (the command line has none), the cleaning timer (the VM lives as long as its pod).
chroot "$ROOT" systemctl mask sys-kernel-debug.mount sys-kernel-tracing.mount \
    sys-fs-fuse-connections.mount modprobe@fuse.service proc-sys-fs-binfmt_misc.automount \
    proc-sys-fs-binfmt_misc.mount systemd-binfmt.service modprobe@efi_pstore.service \
    systemd-pstore.service systemd-random-seed.service systemd-update-utmp.service \
    systemd-update-utmp-runlevel.service systemd-user-sessions.service \
    systemd-journal-flush.service systemd-network-generator.service \
    systemd-tmpfiles-clean.timer >/dev/null 2>&1 || die "systemctl mask failed in the image root"
# No journal: nothing could read it without a login, and journald is ~8 MiB of RSS plus its
# in-memory files. Our units log to the serial console; systemd's own programs to the kernel's
# ring buffer (etc/systemd/system.conf.d/podvm.conf).
chroot "$ROOT" systemctl mask systemd-journald.service systemd-journald.socket \
    systemd-journald-dev-log.socket systemd-journald-audit.socket systemd-journald@.service \
    systemd-journald@.socket systemd-journald-varlink@.socket \
    systemd-journal-catalog-update.service >/dev/null 2>&1 \
    || die "masking journald failed in the image root"
sed -i 's/^root:[^:]*:/root:*:/' "$ROOT/etc/shadow"
# Read-only root: an empty machine-id (systemd puts a transient one on /run), no apt.
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
mkdir -p "$ROOT/media/cidata" "$ROOT/run/peerpod"
rm -rf "$ROOT/boot"/* "$ROOT/var/cache/apt"/*.bin "$ROOT/var/lib/apt/lists"/*

# 4. Initramfs: busybox, the drivers above, veritysetup with its libraries, /init.
INITRD=$WORK/initrd
rm -rf "$INITRD" && mkdir -p "$INITRD"/{bin,dev,proc,sys,run,tmp,newroot,lib/modules}
cp "$(command -v busybox)" "$INITRD/bin/busybox"
install -m 0755 "$REPO/podvm-image/initramfs-init" "$INITRD/init"
for m in "${INITRD_MODULES[@]}"; do
    chroot "$ROOT" /sbin/modprobe -S "$KVER" --show-depends "$m" 2>/dev/null || true
done | awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' > "$WORK/modules.list"
[ -s "$WORK/modules.list" ] || die "no initramfs module resolved for $KVER"
: > "$INITRD/lib/modules/order"
while read -r ko; do
    cp "$ROOT$ko" "$INITRD/lib/modules/"
    basename "$ko" >> "$INITRD/lib/modules/order"
done < "$WORK/modules.list"
install -D -m 0755 "$ROOT/usr/sbin/veritysetup" "$INITRD/bin/veritysetup"
chroot "$ROOT" ldd /usr/sbin/veritysetup | awk '/=>/ { print $3 } /^\t\// { print $1 }' \
    | while read -r lib; do
        [ -n "$lib" ] && install -D -m 0755 "$ROOT$lib" "$INITRD$lib"
    done
[ -e "$INITRD/lib64/ld-linux-x86-64.so.2" ] || die "the dynamic loader was not copied"
(cd "$INITRD" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio --quiet -o -H newc --reproducible --owner=0:0 | gzip -9n) > "$OUT/initrd.img"

# 5. Root filesystem + dm-verity hash tree.
PARTS=$WORK/parts
rm -rf "$PARTS" && mkdir -p "$PARTS"
ROOT_KIB=$(du -sk --apparent-size "$ROOT" | cut -f1)
ROOT_MB=$(( (ROOT_KIB * 12 / 10 + 16384) / 1024 ))
log "root: ${ROOT_KIB} KiB of files, ext4 of ${ROOT_MB} MiB"
mkfs.ext4 -q -t ext4 -b 4096 -L podvm-root -U clear -E hash_seed=00000000-0000-0000-0000-000000000000 \
    -O ^has_journal -m 0 -d "$ROOT" "$PARTS/root.img" "${ROOT_MB}M"
veritysetup format --salt=- "$PARTS/root.img" "$PARTS/verity.img" > "$WORK/verity.txt"
ROOTHASH=$(awk '/^Root hash:/ { print $3 }' "$WORK/verity.txt")
[ ${#ROOTHASH} = 64 ] || die "veritysetup did not print a root hash"
echo "$ROOTHASH" > "$OUT/roothash"
# systemd.verity=no: the initramfs opened the root; systemd-veritysetup-generator would
# otherwise wait for partitions named after the root hash (the Discoverable Partitions rule).
# systemd.gpt_auto=no: no automount of the ESP.
# systemd.status_unit_format=name: unit names in systemd's console status lines (descriptions
# are cut to the serial console's width, and names are what one searches the log for).
CMDLINE="console=ttyS0,115200 roothash=$ROOTHASH systemd.verity=no systemd.gpt_auto=no ro panic=-1 loglevel=4 systemd.status_unit_format=name"
echo "$CMDLINE" > "$OUT/cmdline"

# 6. UKI: systemd's EFI stub with the kernel, initramfs and a command line carrying the hash.
sed -n '/^\(NAME\|ID\|VERSION_ID\|PRETTY_NAME\)=/p' "$ROOT/etc/os-release" > "$WORK/os-release"
echo "$CMDLINE" > "$WORK/uki-cmdline"
objcopy \
    --add-section .osrel="$WORK/os-release" --change-section-vma .osrel=0x20000 \
    --add-section .cmdline="$WORK/uki-cmdline" --change-section-vma .cmdline=0x30000 \
    --add-section .linux="$OUT/vmlinuz" --change-section-vma .linux=0x2000000 \
    --add-section .initrd="$OUT/initrd.img" --change-section-vma .initrd=0x3000000 \
    "$STUB" "$OUT/podvm.efi"
# 6b. Secure Boot: sign the UKI (the key and certificate were checked at the start).
if [ -n "$SB_SIGNER" ]; then
    # stdin closed: nothing can wait for a pass phrase.
    if ! sbsign --key "$PODVM_SB_KEY" --cert "$PODVM_SB_CERT" --output "$WORK/podvm.signed.efi" \
        "$OUT/podvm.efi" </dev/null >"$WORK/sbsign.log" 2>&1; then
        die "sbsign could not sign the UKI: $(grep -v '^warning: data remaining' "$WORK/sbsign.log" \
            | head -n 3 | tr '\n' ' ')"
    fi
    sbverify --cert "$PODVM_SB_CERT" "$WORK/podvm.signed.efi" >/dev/null 2>&1 \
        || die "the signed UKI does not verify with $PODVM_SB_CERT"
    mv "$WORK/podvm.signed.efi" "$OUT/podvm.efi"
    log "UKI signed for Secure Boot by $SB_SIGNER"
else
    log "UKI not signed: firmware with Secure Boot on refuses it (PODVM_SB_KEY and PODVM_SB_CERT" \
        "sign it, docs/podvm-image.md)"
fi
UKI_MB=$(( $(stat -c %s "$OUT/podvm.efi") / 1048576 + 8 ))
ESP_MB=$(( UKI_MB < 64 ? 64 : UKI_MB ))
mkfs.vfat -F 32 -n ESP --invariant -C "$PARTS/esp.img" $(( ESP_MB * 1024 )) >/dev/null
mmd -i "$PARTS/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$PARTS/esp.img" "$OUT/podvm.efi" ::/EFI/BOOT/BOOTX64.EFI

# 7. Trusted store: a labelled placeholder that scratch-storage formats as LUKS2 when asked.
truncate -s "${SCRATCH_MB}M" "$PARTS/trusted.img"
mkfs.ext4 -q -L trusted_store -O ^has_journal "$PARTS/trusted.img"

# 8. GPT disk: ESP, root, verity, trusted store; every partition 1 MiB aligned.
mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }
E=$(mib "$PARTS/esp.img"); R=$(mib "$PARTS/root.img"); V=$(mib "$PARTS/verity.img")
T=$(mib "$PARTS/trusted.img")
DISK_MB=$(( 1 + E + R + V + T + 1 ))
RAW=$WORK/podvm.raw
rm -f "$RAW" && truncate -s "${DISK_MB}M" "$RAW"
S=2048
sfdisk -q "$RAW" <<EOF
label: gpt
start=$S, size=$((E * 2048)), type=$GUID_ESP, name=esp
start=$((S + E * 2048)), size=$((R * 2048)), type=$GUID_ROOT, name=podvm-root
start=$((S + (E + R) * 2048)), size=$((V * 2048)), type=$GUID_VERITY, name=podvm-verity
start=$((S + (E + R + V) * 2048)), size=$((T * 2048)), type=$GUID_DATA, name=trusted_store
EOF
off=1
for p in esp root verity trusted; do
    dd if="$PARTS/$p.img" of="$RAW" bs=1M seek=$off conv=notrunc,sparse status=none
    off=$(( off + $(mib "$PARTS/$p.img") ))
done
qemu-img convert -q -f raw -O qcow2 -c "$RAW" "$OUT/podvm.qcow2"
qemu-img convert -q -f raw -O vpc -o subformat=fixed,force_size "$RAW" "$OUT/podvm.vhd"
rm -f "$RAW"
rm -rf "$PARTS"

cat > "$OUT/image.env" <<EOF
KERNEL_VERSION=$KVER
ROOTHASH=$ROOTHASH
CMDLINE=$CMDLINE
DISK_MIB=$DISK_MB
ROOT_MIB=$R
VERITY_MIB=$V
ESP_MIB=$E
TRUSTED_STORE_MIB=$T
QCOW2_BYTES=$(stat -c %s "$OUT/podvm.qcow2")
VHD_BYTES=$(stat -c %s "$OUT/podvm.vhd")
UKI_BYTES=$(stat -c %s "$OUT/podvm.efi")
UKI_SIGNER=$SB_SIGNER
EOF
log "done: $OUT (disk ${DISK_MB} MiB: ESP $E, root $R, verity $V, trusted store $T;" \
    "qcow2 $(( $(stat -c %s "$OUT/podvm.qcow2") / 1048576 )) MiB)"
