#!/bin/bash
# Run one arm64 capture scenario in QEMU (virt, TCG) with the kernels build-kernel.sh made:
#   run-chain.sh chain    cold boot (a) -> KHO kexec (b, count 1) -> KHO kexec (a, count 2)
#   run-chain.sh nokho    cold (a, kho=on) -> kexec into b with kho=off -> kexec out of it into a
#   run-chain.sh pstore   ramoops in reserve_mem: cold (a) -> KHO kexec (b) -> panic + VM reset
#   run-chain.sh all
# The guest is an initramfs of Debian's busybox-static:arm64 plus guest/khhelper.c (built
# here with aarch64-linux-gnu-gcc -static); it sees $KHARM/out over 9p and writes its
# captures into $KHARM/runs/<scenario>/share/out/<step>/ (see guest/stage.sh).
# Env: KHARM (default ~/.cache/khod-arm64), TIMEOUT (s, default 900), MEM (default 2G).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KHARM=${KHARM:-$HOME/.cache/khod-arm64}
OUT=$KHARM/out
SCN=${1:?usage: run-chain.sh chain|nokho|pstore|all}
if [ "$SCN" = all ]; then
  for s in chain nokho pstore; do "$0" "$s"; done
  exit 0
fi
TIMEOUT=${TIMEOUT:-900}
MEM=${MEM:-2G}
for t in a b; do [ -s "$OUT/Image-$t" ] || { echo "missing $OUT/Image-$t: run build-kernel.sh" >&2; exit 1; }; done

# ---- busybox-static:arm64 through a private apt config (the host's apt is not touched) ----
BB=$KHARM/busybox-arm64
if [ ! -x "$BB/bin/busybox" ]; then
  APT=$KHARM/apt-arm64
  mkdir -p "$APT/lists/partial" "$APT/archives/partial"
  echo "deb http://deb.debian.org/debian bookworm main" > "$APT/sources.list"
  A="-o APT::Architecture=arm64 -o APT::Architectures=arm64 -o Dir::Etc::sourcelist=$APT/sources.list
     -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$APT/lists -o Dir::Cache::Archives=$APT/archives
     -o Dir::State::status=/dev/null"
  ls "$APT"/busybox-static_*_arm64.deb >/dev/null 2>&1 || {
    apt-get $A update >/dev/null; (cd "$APT" && apt-get $A download busybox-static:arm64); }
  rm -rf "$BB"; dpkg-deb -x "$(ls "$APT"/busybox-static_*_arm64.deb | head -1)" "$BB"
fi
# ---- initramfs: busybox + khhelper + guest/init (rebuilt when they change) ----
INITRD=$OUT/initramfs.cpio.gz
if [ ! -s "$INITRD" ] || [ "$HERE/guest/init" -nt "$INITRD" ] || [ "$HERE/guest/khhelper.c" -nt "$INITRD" ]; then
  d=$(mktemp -d); mkdir -p $d/bin $d/dev $d/proc $d/sys $d/tmp
  cp "$BB/bin/busybox" $d/bin/busybox
  aarch64-linux-gnu-gcc -static -O2 -Wall -o $d/bin/khhelper "$HERE/guest/khhelper.c"
  cp "$HERE/guest/init" $d/init; chmod 755 $d/init
  mknod -m 600 $d/dev/console c 5 1; mknod -m 666 $d/dev/null c 1 3
  (cd $d && find . | cpio -o -H newc --quiet | gzip -9) > "$INITRD"
  rm -rf "$d"
fi

BASE="console=ttyAMA0 loglevel=6 panic=-1"
KHO="kho=on kho_scratch=16M,64M,16M"
RAMOOPS="reserve_mem=1M:4096:oops ramoops.mem_name=oops ramoops.record_size=65536 ramoops.console_size=65536 ramoops.pmsg_size=65536 ramoops.max_reason=4"
KA=/kernels/Image-a; KB=/kernels/Image-b     # as the guest sees $KHARM/out
RUN=$KHARM/runs/$SCN; SHARE=$RUN/share
rm -rf "$RUN"; mkdir -p "$SHARE/out"
REBOOT=-no-reboot
case "$SCN" in
  chain)
    { printf '0|cold|%s|%s\n' "$KA" "$BASE $KHO"
      printf '1|kexec-s|%s|%s\n' "$KB" "$BASE $KHO"
      printf '2|kexec-s|%s|%s\n' "$KA" "$BASE $KHO"; } > $SHARE/plan ;;
  nokho)
    { printf '0|cold|%s|%s\n' "$KA" "$BASE $KHO"
      printf '1|kexec-s|%s|%s\n' "$KB" "$BASE kho=off"
      printf '2|kexec-s|%s|%s\n' "$KA" "$BASE $KHO"; } > $SHARE/plan ;;
  pstore)
    REBOOT=""   # the panic resets the VM (RAM survives a QEMU reset); step 0 boots again
    { printf '0|cold|%s|%s\n' "$KA" "$BASE $KHO $RAMOOPS"
      printf '1|kexec-s|%s|%s\n' "$KB" "$BASE $KHO $RAMOOPS"
      printf '2|panic|-|-\n'; } > $SHARE/plan
    cat > $SHARE/hook.sh <<'HOOK'
#!/bin/sh
# a userspace record in pstore's pmsg buffer before leaving this kernel
echo "khlab pmsg: step $2 release $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime)" > /dev/pmsg0
HOOK
    chmod +x $SHARE/hook.sh ;;
  *) echo "unknown scenario $SCN" >&2; exit 2 ;;
esac
cp "$HERE/guest/stage.sh" $SHARE/stage.sh
APPEND0="$(head -1 $SHARE/plan | cut -d'|' -f4) khlab.step=0"
echo "== $SCN: Image-a [$APPEND0]"
set +e
T0=$(date +%s)
timeout $TIMEOUT qemu-system-aarch64 -M virt -accel tcg,thread=single,tb-size=128 -cpu max,pauth-impdef=on -smp 2 -m $MEM \
  -display none -monitor none -serial stdio $REBOOT \
  -kernel "$OUT/Image-a" -initrd "$INITRD" -append "$APPEND0" \
  -virtfs local,path=$OUT,mount_tag=khkern,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path=$SHARE,mount_tag=khshare,security_model=none,multidevs=remap \
  < /dev/null > $RUN/serial.log 2> $RUN/qemu.stderr
RC=$?
set -e
echo "qemu rc=$RC wall=$(( $(date +%s) - T0 ))s" | tee $RUN/qemu-rc.txt
grep -a 'KHLAB:' $RUN/serial.log || true
ls $SHARE/out
