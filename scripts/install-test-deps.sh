#!/usr/bin/env bash
# Installs the Debian packages the tests need, only those missing: a no-op when all are present.
#
# Each entry is "package:command-or-path-that-proves-it-is-installed".
set -euo pipefail

REQUIRED=(
    # The agent's network tests: `ip` to make links in a private network namespace, `unshare`.
    "iproute2:ip"
    "util-linux:unshare"
    # The container runtime (libcontainer) links libseccomp, and builds libbpf for the cgroup v2
    # device controller.
    "libseccomp-dev:/usr/include/seccomp.h"
    "libelf-dev:/usr/include/libelf.h"
    "zlib1g-dev:/usr/include/zlib.h"
    "pkg-config:pkg-config"
    # A static busybox is the root filesystem of the test containers.
    "busybox-static:/bin/busybox"
    # The test VM (peerpod-tests' TestVm; its kernel comes from `apt-get download`, not installed).
    "qemu-system-x86:qemu-system-x86_64"
    # The simulated Azure vTPM (peerpod-tests' cvm module) is swtpm behind a simulated paravisor;
    # tpm2-tools is used by tests that cross-check our TPM code against the reference tools.
    "swtpm:swtpm"
    "tpm2-tools:tpm2_checkquote"
    # The confidential data hub's secure mounts: LUKS2 through cryptsetup, ext4 on top, loop
    # devices for the tests.
    "cryptsetup-bin:cryptsetup"
    "e2fsprogs:mkfs.ext4"
    # cdh/tests/scratch_vm.rs: a device-mapper linear device (not dm-crypt) in the test VM.
    "dmsetup:dmsetup"
    # Image signatures (peerpod-image-signature): GnuPG makes the keys and simple-signing
    # signatures the tests verify, and is the benchmark's baseline; skopeo's standalone-sign is
    # the real producer of simple-signing signatures.
    "gnupg:gpg"
    "skopeo:skopeo"
    # Pod VM provisioning: the cidata ISO of process-user-data's guest test, and
    # `systemd-analyze verify` of the podvm/ units.
    "genisoimage:genisoimage"
    "systemd:systemd-analyze"
    # agent-protocol-forwarder: the NOTRACK rules for the pod network's VXLAN port.
    "iptables:iptables"
    # Image pulls (peerpod-image): a local registry (htpasswd auth: apache2-utils' htpasswd makes
    # the bcrypt file; TLS certificates from openssl), images built with umoci, pushed with skopeo.
    "docker-registry:docker-registry"
    "umoci:umoci"
    "skopeo:skopeo"
    "apache2-utils:htpasswd"
    "openssl:openssl"
    # cdh/tests/encrypted_pull.rs uploads the encrypted layer and its manifest with curl.
    "curl:curl"
    # The pod VM image (make podvm, podvm-image/build.sh): mmdebstrap for the root, veritysetup
    # (cryptsetup-bin, above) for dm-verity, the UKI stub, the ESP (FAT without mounting), the GPT,
    # the initramfs archive, qcow2/VHD conversion.
    "mmdebstrap:mmdebstrap"
    "systemd-boot-efi:/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
    "dosfstools:mkfs.vfat"
    "mtools:mcopy"
    "fdisk:sfdisk"
    "cpio:cpio"
    "binutils:objcopy"
    # Secure Boot: sbsign signs the UKI (build.sh with PODVM_SB_KEY/PODVM_SB_CERT; the tests'
    # image with OVMF's snakeoil key), sbverify checks it.
    "sbsigntool:sbsign"
    "qemu-utils:qemu-img"
    # The UEFI boot of the pod VM's UKI (podvm-image/tests/e2e.rs): OVMF's 4M firmware. Not
    # pulled in by qemu-system-x86 without its recommends.
    "ovmf:/usr/share/OVMF/OVMF_CODE_4M.fd"
)

missing=()
for entry in "${REQUIRED[@]}"; do
    pkg=${entry%%:*}
    probe=${entry#*:}
    if [[ $probe == /* ]]; then
        [[ -e $probe ]] && continue
    else
        command -v "$probe" >/dev/null 2>&1 && continue
    fi
    missing+=("$pkg")
done

for tool in cargo rustfmt cargo-clippy; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-test-deps: '$tool' is missing: install the Rust toolchain with rustfmt and clippy (rustup component add rustfmt clippy)" >&2
        exit 1
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-test-deps: everything the tests need is installed"
    exit 0
fi

echo "install-test-deps: installing ${missing[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-test-deps: need root (or sudo) to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
