#!/bin/sh
# PID 1 of the pyvirt test guest (busybox ash). It mounts the API filesystems, loads
# the disk driver only when a disk is configured (keeps diskless boots fast), runs
# the workload, and then stays alive: PID 1 exiting would panic the kernel and bury
# the workload's last words under the panic report.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

disk=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        pvw.disk=*) disk="${arg#pvw.disk=}" ;;
    esac
done

if [ -n "$disk" ]; then
    # Dependencies first; the builder wrote the order (empty if virtio_blk is built in).
    while read -r mod; do
        insmod "/lib/modules/$mod" || echo "PVW ERROR insmod $mod failed"
    done < /lib/modules/order
    n=0
    while [ ! -b "$disk" ] && [ "$n" -lt 100 ]; do
        sleep 0.05
        n=$((n + 1))
    done
    [ -b "$disk" ] || echo "PVW ERROR disk $disk did not appear"
fi

/bin/pvworkload
echo "PVW EXIT rc=$?"
while :; do
    sleep 3600
done
