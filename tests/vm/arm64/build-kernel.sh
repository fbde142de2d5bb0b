#!/bin/bash
# Cross-build the arm64 KHO kernels for the capture runs from Debian's linux-source-7.3:
#   $KHARM/out/Image-a (7.3.4-khod-arm64-a) and $KHARM/out/Image-b (7.3.4-khod-arm64-b),
# the same tree with different LOCALVERSION, on top of `allnoconfig` + kho-arm64.config.
# Needs: gcc-aarch64-linux-gnu flex bison bc libssl-dev libelf-dev (Debian packages).
# KHARM (scratch, default ~/.cache/khod-arm64) holds the unpacked source and the kernels;
# the source .deb is taken from $KHOD_E2E_CACHE/apt (tests/vm/kernel.py's cache) when it is
# there, else fetched with a private apt config under $KHARM/apt (host apt untouched).
# Usage: build-kernel.sh  (JOBS=N, default nproc; run it under `nice` on a shared machine)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KHARM=${KHARM:-$HOME/.cache/khod-arm64}
E2E=${KHOD_E2E_CACHE:-$HOME/.cache/khod-e2e}
JOBS=${JOBS:-$(nproc)}
SRC=$KHARM/src/linux-source-7.3
APT=$KHARM/apt
mkdir -p "$KHARM/out"
if [ ! -f "$SRC/Makefile" ]; then
  deb=$(ls "$E2E"/apt/linux-source-7.3_*_all.deb "$APT"/linux-source-7.3_*_all.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    A="-o Dir::Etc::sourcelist=$APT/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$APT/lists -o Dir::Cache::Archives=$APT/archives"
    mkdir -p "$APT/lists/partial" "$APT/archives/partial"
    printf '%s\n' "deb http://deb.debian.org/debian trixie-backports main" \
                  "deb http://deb.debian.org/debian sid main" > "$APT/sources.list"
    apt-get $A update >/dev/null
    (cd "$APT" && apt-get $A download linux-source-7.3)
    deb=$(ls "$APT"/linux-source-7.3_*_all.deb | head -1)
  fi
  rm -rf "$KHARM/debsrc"; mkdir -p "$KHARM/debsrc" "$KHARM/src"
  dpkg-deb -x "$deb" "$KHARM/debsrc"
  tar -C "$KHARM/src" -xJf "$KHARM/debsrc"/usr/src/linux-source-7.3.tar.xz
  rm -rf "$KHARM/debsrc"
  basename "$deb" > "$KHARM/out/source"
fi
cd "$SRC"
export ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-
build_one() {
  local tag=$1 t0 t1
  t0=$(date +%s)
  make -s allnoconfig
  ./scripts/kconfig/merge_config.sh -m .config "$HERE/kho-arm64.config" >/dev/null
  ./scripts/config --set-str LOCALVERSION "-khod-arm64-$tag"
  make -s olddefconfig
  for o in KEXEC_FILE KEXEC_HANDOVER KEXEC_HANDOVER_DEBUGFS LIVEUPDATE DEBUG_FS PSTORE_RAM \
           PSTORE_PMSG DEVTMPFS_MOUNT BLK_DEV_INITRD 9P_FS NET_9P_VIRTIO VIRTIO_PCI \
           SERIAL_AMBA_PL011_CONSOLE IKCONFIG_PROC SYSCTL HOTPLUG_CPU MAGIC_SYSRQ; do
    grep -q "^CONFIG_$o=y" .config || { echo "MISSING CONFIG_$o" >&2; exit 1; }
  done
  make -j"$JOBS" Image
  t1=$(date +%s)
  cp arch/arm64/boot/Image "$KHARM/out/Image-$tag"
  cp .config "$KHARM/out/config-$tag"
  make -s kernelrelease > "$KHARM/out/release-$tag"
  echo "$(cat "$KHARM/out/release-$tag") built in $((t1-t0))s with -j$JOBS" | tee -a "$KHARM/out/build-times.txt"
}
for tag in a b; do
  [ -s "$KHARM/out/Image-$tag" ] || build_one $tag
done
ls -la "$KHARM/out"
