#!/usr/bin/env bash
# Install what a fresh Debian 12 or 13 machine lacks to build, test and run pyvirt.
# Idempotent: every step checks first and does nothing when already satisfied.
set -euo pipefail

APT_PACKAGES=(qemu-system-x86 qemu-utils qemu-system-modules-spice busybox-static cpio
              iproute2 gcc libc6-dev python3-venv libvirt-clients python3-libvirt
              openssh-server openssh-client sshpass procps psmisc e2fsprogs util-linux)
# Packages that must come from backports on Debian 12 (its QEMU 7.2 loses TCG writes
# during migration; pyvirt needs >= 9.0).
QEMU_PACKAGES=(qemu-system-x86 qemu-utils qemu-system-modules-spice qemu-system-common
               qemu-system-data qemu-block-extra)
MIN_QEMU_MAJOR=9

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

codename() {
    . /etc/os-release
    printf '%s' "${VERSION_CODENAME:-unknown}"
}

# URIs of the machine's existing Debian archive entry (never a hard-coded mirror).
debian_archive_uris() {
    local f uris=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        # deb822 stanzas: take URIs of a stanza whose Suites hold the release codename.
        uris=$(awk -v rel="$1" '
            BEGIN { RS=""; FS="\n" }
            {
                u=""; s=""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { u = $i; sub(/^URIs:[ \t]*/, "", u) }
                    if ($i ~ /^Suites:/) { s = " " $i " "; sub(/^ Suites:/, "", s) }
                }
                if (u != "" && s ~ (" " rel "[ \t]")) { print u; exit }
            }' "$f")
        [ -n "$uris" ] && { printf '%s' "$uris"; return 0; }
    done
    if [ -e /etc/apt/sources.list ]; then
        uris=$(awk -v rel="$1" '$1 == "deb" && $3 == rel { print $2; exit }' /etc/apt/sources.list)
        [ -n "$uris" ] && { printf '%s' "$uris"; return 0; }
    fi
    return 1
}

ensure_backports_source() {
    local rel="$1" target=/etc/apt/sources.list.d/pyvirt-backports.sources uris
    if grep -rqs "${rel}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    uris=$(debian_archive_uris "$rel") || {
        log "cannot find this machine's Debian archive entry for '$rel' to reuse for backports"
        exit 1
    }
    log "adding ${rel}-backports source ($uris)"
    as_root tee "$target" >/dev/null <<SRC
Types: deb
URIs: $uris
Suites: ${rel}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    APT_UPDATED=0
}

qemu_major() {
    command -v qemu-system-x86_64 >/dev/null || { echo 0; return; }
    qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p'
}

missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || printf '%s ' "$p"
    done
}

APT_UPDATED=1
apt_update_once() {
    if [ "$APT_UPDATED" != 2 ]; then
        as_root apt-get update -qq
        APT_UPDATED=2
    fi
}

# The unprivileged system user and group QEMU runs as (qemu.conf user/group defaults): no
# home, no shell, no supplementary groups (pyvirtd grants it the devices it needs by ACL).
QEMU_USER=pyvirt-qemu
QEMU_GROUP=pyvirt-qemu

ensure_qemu_user() {
    if ! getent group "$QEMU_GROUP" >/dev/null; then
        log "creating system group $QEMU_GROUP"
        as_root groupadd --system "$QEMU_GROUP"
    fi
    if ! getent passwd "$QEMU_USER" >/dev/null; then
        log "creating system user $QEMU_USER"
        as_root useradd --system --gid "$QEMU_GROUP" --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin \
            --comment "pyvirt QEMU processes" "$QEMU_USER"
    fi
}

main() {
    local rel missing
    rel=$(codename)
    export DEBIAN_FRONTEND=noninteractive
    if [ "$rel" = bookworm ]; then
        ensure_backports_source "$rel"
        if [ "$(qemu_major)" -lt "$MIN_QEMU_MAJOR" ] || [ -n "$(missing_packages "${QEMU_PACKAGES[@]}")" ]; then
            apt_update_once
            log "installing QEMU from bookworm-backports"
            as_root apt-get install -y -qq -t bookworm-backports "${QEMU_PACKAGES[@]}" >/dev/null
        fi
    fi
    missing=$(missing_packages "${APT_PACKAGES[@]}")
    if [ -n "$missing" ]; then
        apt_update_once
        log "installing: $missing"
        # shellcheck disable=SC2086
        as_root apt-get install -y -qq $missing >/dev/null
    fi
    if [ "$(qemu_major)" -lt "$MIN_QEMU_MAJOR" ]; then
        log "QEMU >= $MIN_QEMU_MAJOR.0 is required, found: $(qemu-system-x86_64 --version | head -n1)"
        exit 1
    fi
    ensure_qemu_user
}

main "$@"
