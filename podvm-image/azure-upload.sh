#!/bin/bash
# Uploads the pod VM's fixed-size VHD to Azure and makes it a confidential-VM gallery image (see
# docs/podvm.md, "Uploading the image to Azure").
#
#   podvm-image/azure-upload.sh [--run | --check-only] [VHD]
#
# Default: checks the VHD, then PRINTS the az commands (dry run). --run runs them (needs `az`
# logged in). --check-only checks the VHD and stops. VHD defaults to
# target/podvm-image/out/podvm.vhd.
#
# The check: the file ends with a VHD footer ("conectix") whose disk type is fixed (2), whose
# current size is the file size less the 512-byte footer, and that size is a whole number of MiB
# (Azure refuses other VHDs).
#
# Environment (each has a placeholder in the dry run, all but the defaulted ones are required
# with --run): AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZURE_REGION, AZURE_STORAGE_ACCOUNT,
# AZURE_STORAGE_CONTAINER (podvm), GALLERY_NAME (peerpods), IMAGE_DEFINITION (peerpod-podvm),
# IMAGE_VERSION (0.1.<unix time>), IMAGE_PUBLISHER (peerpod-guest), IMAGE_OFFER (podvm),
# IMAGE_SKU (debian-12-cvm).
#
# Secure Boot: AZURE_SB_CERT (the PEM certificate whose key signed the UKI, build.sh's
# PODVM_SB_CERT) makes the image definition TrustedLaunchAndConfidentialVmSupported and creates
# the image version through the REST API with that certificate as the UEFI db (custom UEFI
# keys), written to image-version-VERSION.json next to the VHD. AZURE_SB_TEMPLATES (default
# NoSignatureTemplate: only that certificate) names Azure's default key templates to add, e.g.
# MicrosoftUefiCertificateAuthorityTemplate.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=dry-run
case "${1:-}" in
    --run) MODE=run; shift ;;
    --check-only) MODE=check; shift ;;
    --dry-run) shift ;;
    -*) echo "usage: $0 [--run | --check-only | --dry-run] [VHD]" >&2; exit 2 ;;
esac
VHD=${1:-${CARGO_TARGET_DIR:-$REPO/target}/podvm-image/out/podvm.vhd}

die() { echo "azure-upload: $VHD: $*" >&2; exit 1; }

# 1. The VHD: a fixed-size VHD whose virtual size is a whole number of MiB.
[ -f "$VHD" ] || die "no such file (build it with make podvm)"
SIZE=$(stat -c %s "$VHD")
[ "$SIZE" -gt 512 ] || die "$SIZE bytes is too small for a VHD"
# Reads COUNT bytes at OFFSET of the footer as one unsigned big-endian number.
footer_be() {
    local hex
    hex=$(od -An -v -t x1 -j $((SIZE - 512 + $1)) -N "$2" "$VHD" | tr -d ' \n')
    [ ${#hex} = $(($2 * 2)) ] || die "cannot read the footer"
    echo $((16#$hex))
}
COOKIE=$(dd if="$VHD" bs=1 skip=$((SIZE - 512)) count=8 status=none)
[ "$COOKIE" = conectix ] || die "no VHD footer (\"conectix\") in its last 512 bytes: convert the disk with qemu-img convert -O vpc -o subformat=fixed,force_size"
DISK_TYPE=$(footer_be 60 4)
[ "$DISK_TYPE" = 2 ] || die "disk type $DISK_TYPE is not fixed (2): Azure takes fixed VHDs only (qemu-img convert -O vpc -o subformat=fixed,force_size)"
VIRTUAL=$(footer_be 48 8)
[ "$VIRTUAL" = $((SIZE - 512)) ] || die "the footer's size $VIRTUAL is not the file size less the footer ($((SIZE - 512)))"
[ $((VIRTUAL % 1048576)) = 0 ] || die "virtual size $VIRTUAL bytes is not a whole number of MiB, which Azure requires: pad the raw disk to a MiB multiple before converting"
echo "azure-upload: $VHD: fixed VHD, virtual size $((VIRTUAL / 1048576)) MiB" >&2
[ "$MODE" = check ] && exit 0

# 2. The commands.
if [ "$MODE" = run ]; then
    command -v az >/dev/null || { echo "azure-upload: az is missing (Azure CLI)" >&2; exit 1; }
    for v in AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AZURE_REGION AZURE_STORAGE_ACCOUNT; do
        [ -n "${!v:-}" ] || { echo "azure-upload: $v is not set" >&2; exit 1; }
    done
fi
SUB=${AZURE_SUBSCRIPTION_ID:-"<subscription id>"}
RG=${AZURE_RESOURCE_GROUP:-"<resource group>"}
REGION=${AZURE_REGION:-"<region>"}
ACCOUNT=${AZURE_STORAGE_ACCOUNT:-"<storage account>"}
CONTAINER=${AZURE_STORAGE_CONTAINER:-podvm}
GALLERY=${GALLERY_NAME:-peerpods}
DEFINITION=${IMAGE_DEFINITION:-peerpod-podvm}
VERSION=${IMAGE_VERSION:-0.1.$(date +%s)}
BLOB="podvm-$VERSION.vhd"
BLOB_URL="https://$ACCOUNT.blob.core.windows.net/$CONTAINER/$BLOB"
ACCOUNT_ID="/subscriptions/$SUB/resourceGroups/$RG/providers/Microsoft.Storage/storageAccounts/$ACCOUNT"
IMAGE_ID="/subscriptions/$SUB/resourceGroups/$RG/providers/Microsoft.Compute/galleries/$GALLERY/images/$DEFINITION/versions/$VERSION"

# Secure Boot keys: the certificate as base64 DER, for the image version's UEFI db.
SB_DER=
if [ -n "${AZURE_SB_CERT:-}" ]; then
    command -v openssl >/dev/null || { echo "azure-upload: openssl is missing" >&2; exit 1; }
    SB_DER=$(openssl x509 -in "$AZURE_SB_CERT" -outform DER 2>/dev/null | base64 -w0) || true
    [ -n "$SB_DER" ] || { echo "azure-upload: AZURE_SB_CERT: $AZURE_SB_CERT is not a PEM X.509 certificate" >&2; exit 1; }
    for v in "$SUB" "$RG" "$REGION" "$ACCOUNT" "$CONTAINER" "$GALLERY" "$DEFINITION" "$VERSION"; do
        case "$v" in *'"'*|*\\*) echo "azure-upload: a quote or backslash in \"$v\"" >&2; exit 1 ;; esac
    done
    # Template names are words (Azure's are NoSignatureTemplate,
    # MicrosoftUefiCertificateAuthorityTemplate, MicrosoftWindowsTemplate), comma-separated.
    TEMPLATE_LIST=
    IFS=, read -r -a TEMPLATES <<< "${AZURE_SB_TEMPLATES:-NoSignatureTemplate}"
    for t in "${TEMPLATES[@]}"; do
        [[ "$t" =~ ^[A-Za-z]+$ ]] || { echo "azure-upload: AZURE_SB_TEMPLATES: \"$t\" is not a template name (letters only, comma-separated)" >&2; exit 1; }
        TEMPLATE_LIST+=${TEMPLATE_LIST:+, }\"$t\"
    done
    BODY=$(dirname "$VHD")/image-version-$VERSION.json
    cat > "$BODY" <<JSON
{
  "location": "$REGION",
  "properties": {
    "storageProfile": {
      "osDiskImage": {
        "source": { "storageAccountId": "$ACCOUNT_ID", "uri": "$BLOB_URL" }
      }
    },
    "securityProfile": {
      "uefiSettings": {
        "signatureTemplateNames": [$TEMPLATE_LIST],
        "additionalSignatures": { "db": [ { "type": "x509", "value": ["$SB_DER"] } ] }
      }
    }
  }
}
JSON
    echo "azure-upload: Secure Boot db: $(openssl x509 -in "$AZURE_SB_CERT" -noout -subject -nameopt RFC2253 | sed 's/^subject=//'); image version body: $BODY" >&2
fi

step() {
    printf '%q ' "$@" | sed 's/ $//'
    echo
    if [ "$MODE" = run ]; then "$@"; fi
}

[ "$MODE" = run ] || echo "# dry run: the commands --run would run" >&2
step az storage container create --subscription "$SUB" --account-name "$ACCOUNT" \
    --name "$CONTAINER" --auth-mode login
# A page blob: Azure creates disks only from page blobs.
step az storage blob upload --subscription "$SUB" --account-name "$ACCOUNT" \
    --container-name "$CONTAINER" --name "$BLOB" --file "$VHD" --type page --auth-mode login
step az sig create --subscription "$SUB" --resource-group "$RG" --gallery-name "$GALLERY" \
    --location "$REGION"
# ConfidentialVmSupported: VMs of this image may be confidential VMs (SEV-SNP / TDX) or not.
# Custom UEFI keys need TrustedLaunchAndConfidentialVmSupported (Azure's rule for them).
# Gen 2 (UEFI) is required for confidential VMs; the image's UKI is EFI/BOOT/BOOTX64.EFI.
SECURITY_TYPE=ConfidentialVmSupported
[ -n "$SB_DER" ] && SECURITY_TYPE=TrustedLaunchAndConfidentialVmSupported
step az sig image-definition create --subscription "$SUB" --resource-group "$RG" \
    --gallery-name "$GALLERY" --gallery-image-definition "$DEFINITION" \
    --publisher "${IMAGE_PUBLISHER:-peerpod-guest}" --offer "${IMAGE_OFFER:-podvm}" \
    --sku "${IMAGE_SKU:-debian-12-cvm}" --os-type Linux --os-state Generalized \
    --hyper-v-generation V2 --architecture x64 --location "$REGION" \
    --features SecurityType=$SECURITY_TYPE
if [ -n "$SB_DER" ]; then
    # Custom UEFI keys are set only through the REST API (api-version 2022-08-03 or later).
    step az rest --method put \
        --url "https://management.azure.com$IMAGE_ID?api-version=2023-07-03" --body "@$BODY"
    echo "# peer-pods-cm: AZURE_IMAGE_ID=\"$IMAGE_ID\" and ENABLE_SECURE_BOOT=\"true\" (with DISABLECVM unset or false)"
else
    step az sig image-version create --subscription "$SUB" --resource-group "$RG" \
        --gallery-name "$GALLERY" --gallery-image-definition "$DEFINITION" \
        --gallery-image-version "$VERSION" --location "$REGION" \
        --os-vhd-storage-account "$ACCOUNT_ID" --os-vhd-uri "$BLOB_URL"
    echo "# peer-pods-cm: AZURE_IMAGE_ID=\"$IMAGE_ID\" (with DISABLECVM unset or false; ENABLE_SECURE_BOOT stays off: the VM's default keys do not trust this UKI, see AZURE_SB_CERT)"
fi
