#!/bin/busybox sh
# khod e2e initramfs /init. The guest's root is the host's / (read-only, over 9p, tag
# "hostroot") under a tmpfs overlay; the run's share (tag "khshare") is writable at
# /khshare. PID 1 then becomes the host's python running the checkout's guest driver,
# whose interpreter path the harness writes to /khshare/python.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /host /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host \
  || { echo "KHODE2E: 9p hostroot mount failed" > /dev/console; poweroff -f; }
mount -t tmpfs -o size=256m tmpfs /rw
mkdir -p /rw/upper /rw/work
# writes land in the tmpfs upper layer; the host's /tmp stays visible (a checkout may
# live there), so only /run starts empty
if mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot
then
  mkdir -p /newroot/khshare
else
  mount --bind /host /newroot  # read-only: the writable places get tmpfs
  for d in tmp var/tmp; do mount -t tmpfs tmpfs /newroot/$d; done
fi
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=mmap khshare /newroot/khshare \
  || echo "KHODE2E: khshare mount failed" > /dev/console
mount -t tmpfs tmpfs /newroot/run
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
PY=$(cat /newroot/khshare/python)
exec switch_root /newroot "$PY" /khshare/guest.py
