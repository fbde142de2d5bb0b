#!/bin/sh
# PID 1 of the arm64 capture guest (busybox sh), copied into the share by run-chain.sh.
# Reads khlab.step=N from /proc/cmdline, captures this boot into /khshare/out/<stepdir>/
# (root/ shaped like / for khod's --sysroot, plus logs), then does step N+1 of
# /khshare/plan (STEP|ACTION|KERNEL|APPEND; ACTION: kexec-s | panic), or powers off.
export PATH=/bin
UP=$(cut -d' ' -f1 /proc/uptime)
echo "KHLAB: userspace step start uptime=$UP release=$(uname -r)" > /dev/console
STEP=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^khlab.step=//p')
STEP=${STEP:-0}
SD=step$STEP
n=1
while [ -e /khshare/out/$SD ]; do n=$((n+1)); SD=step$STEP-boot$n; done
O=/khshare/out/$SD
R=$O/root
mkdir -p $R/dev $R/etc
echo "$UP" > $O/uptime_at_userspace.txt
uname -r > $O/uname-r.txt
# the files khod reads, byte for byte (read to EOF), at their real paths under root/;
# of /proc/device-tree only /chosen and the root's own properties (not QEMU's devices)
DT=/proc/device-tree/chosen
for f in /proc/device-tree/*; do [ -f "$f" ] && DT="$DT $f"; done
khhelper snap $R /proc/cmdline /proc/version /proc/stat /proc/config.gz \
  /proc/sys/kernel/osrelease /proc/sys/kernel/random/boot_id \
  /sys/kernel/kexec_loaded /sys/kernel/kexec_crash_loaded /sys/kernel/kexec_crash_size \
  /sys/kernel/kexec /sys/module/pstore/parameters /sys/module/ramoops/parameters \
  /sys/module/printk/parameters /sys/kernel/debug/kho /sys/fs/pstore \
  /sys/firmware/fdt $DT 2> $O/snap-errors.txt
khhelper kmsg $R/dev/kmsg 2> $O/kmsg.raw.info
khhelper mtimes /sys/fs/pstore $O/pstore-mtimes.txt
dmesg > $O/dmesg.txt
ls -lR /sys/kernel/debug/kho > $O/debugfs-kho-listing.txt 2>&1
ls -la --full-time /sys/fs/pstore > $O/pstore-listing.txt 2>&1
[ -x /khshare/hook.sh ] && /khshare/hook.sh "$O" "$STEP" > $O/hook.log 2>&1
sync
ACTION=poweroff
if [ "$n" = 1 ]; then
  NEXT=$((STEP+1))
  LINE=$(grep "^$NEXT|" /khshare/plan | head -1)
  [ -n "$LINE" ] && ACTION=$(echo "$LINE" | cut -d'|' -f2)
  KERNEL=$(echo "$LINE" | cut -d'|' -f3)
  APPEND="$(echo "$LINE" | cut -d'|' -f4-) khlab.step=$NEXT"
fi
case "$ACTION" in
  kexec-s)
    khhelper load "$KERNEL" /kernels/initramfs.cpio.gz "$APPEND" > $O/kexec-load.log 2>&1
    echo "khhelper load $KERNEL /kernels/initramfs.cpio.gz \"$APPEND\" rc=$?" >> $O/kexec-load.log
    ls -lR /sys/kernel/debug/kho > $O/debugfs-kho-listing-after-load.txt 2>&1
    sync
    echo "khlab-marker: leaving step $STEP release $(uname -r) boot_id $(cat /proc/sys/kernel/random/boot_id) -> step $NEXT $ACTION $(basename "$KERNEL")" > /dev/kmsg
    echo "KHLAB: kexec now (step $STEP -> $NEXT)" > /dev/console
    khhelper exec
    echo "KHLAB: kexec FAILED" > /dev/console
    ;;
  panic)
    echo "khlab-marker: leaving step $STEP release $(uname -r) boot_id $(cat /proc/sys/kernel/random/boot_id) -> panic" > /dev/kmsg
    echo "KHLAB: triggering panic via sysrq c" > /dev/console
    echo 1 > /proc/sys/kernel/sysrq
    echo c > /proc/sysrq-trigger
    ;;
esac
echo "KHLAB: poweroff" > /dev/console
sync
poweroff -f
