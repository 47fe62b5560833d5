#!/bin/bash
# SPDX-License-Identifier: MIT
#
# A throwaway systemd container for the system test (recipe: ENVIRONMENT.md, "A real
# systemd as PID 1, with enforced cgroup limits"): systemd runs as PID 1 of new PID,
# mount, cgroup, UTS, IPC and network namespaces, on an overlay of the host's / whose
# upper layer is a tmpfs — nothing it writes reaches the host's disk — with fresh cgroup-v1
# hierarchies (memory, pids, cpu, cpuacct, name=systemd) and cgroup2 on "unified", so
# that systemd really enforces MemoryMax=/TasksMax=/CPUQuota= and Delegate=.
#
#   container.sh boot DIR [SYSTEMD-ARGS...]   boot; prints the host PID of the container's
#                                             systemd; DIR (must be empty or absent) holds
#                                             pid, console.log (output of the set-up; systemd
#                                             itself logs to its journal) and the cgroups
#   container.sh shutdown DIR [TIMEOUT]       systemctl poweroff inside, wait (SIGKILL the
#                                             PID namespace after TIMEOUT s, default 30),
#                                             remove the cgroups; safe to call repeatedly
#   container.sh exec DIR COMMAND...          run a command inside (nsenter -a)
#
# Everything that makes the host react is masked: udev (it would trigger uevents on the
# host's devices), sysctl, binfmt, kernel modules, the kernel file systems, getty, timers
# of maintenance jobs. /sys is read-only inside. The host's own services and ports are
# invisible (own network namespace with its own loopback).
set -euo pipefail

die() { printf 'container.sh: %s\n' "$*" >&2; exit 1; }

CGROUP_FS=/sys/fs/cgroup
# v1 hierarchies systemd needs inside (mounted fresh there); "systemd" is name=systemd
V1_HIERARCHIES=(memory pids cpu cpuacct systemd)

MASKED=(
        systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
        systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service
        systemd-sysctl.service systemd-binfmt.service binfmt-support.service
        proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
        systemd-modules-load.service kmod-static-nodes.service
        sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount
        sys-fs-fuse-connections.mount dev-hugepages.mount
        systemd-remount-fs.service systemd-fsck-root.service systemd-pstore.service
        systemd-random-seed.service systemd-timesyncd.service systemd-firstboot.service
        systemd-machine-id-commit.service systemd-hostnamed.service systemd-networkd.service
        getty.target getty@tty1.service console-getty.service serial-getty@.service
        apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service
        fstrim.timer man-db.timer logrotate.timer dpkg-db-backup.timer
)

# The cgroup directory of the calling process in a v1 hierarchy ("systemd": name=systemd)
# or in cgroup2 ("unified").
own_cgroup() {
        local h=$1 line
        while IFS= read -r line; do
                local ctl=${line#*:}
                ctl=${ctl%%:*}
                local path=${line#*:*:}
                if [[ $h == unified && $line == 0::* ]] ||
                        [[ $h == systemd && ,$ctl, == *,name=systemd,* ]] ||
                        [[ $h != unified && $h != systemd && ,$ctl, == *,$h,* ]]; then
                        printf '%s\n' "$path"
                        return 0
                fi
        done </proc/self/cgroup
        return 1
}

# Removes a cgroup directory tree bottom-up (cgroups with no processes left).
remove_cgroup_tree() {
        local dir=$1 i
        [[ -d $dir ]] || return 0
        for ((i = 0; i < 50; i++)); do
                find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
                [[ -d $dir ]] || return 0
                sleep 0.1
        done
        printf 'container.sh: cannot remove %s\n' "$dir" >&2
        return 1
}

# ---------------------------------------------------------------------------------------
# inside: PID 1 of the new namespaces, before systemd

inner() {
        local work=$1
        shift
        local root=$work/root d

        mount --make-rprivate /
        mount -t tmpfs -o mode=0755,size=50% dtask-systest "$work"
        mkdir "$work/upper" "$work/work" "$root"
        mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$root"

        mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
        mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
        mount -t tmpfs -o mode=0755,nosuid,nodev,noexec cgroup-root "$root/sys/fs/cgroup"
        for d in memory pids cpu cpuacct; do
                mkdir "$root/sys/fs/cgroup/$d"
                mount -t cgroup -o "nosuid,nodev,noexec,$d" cgroup "$root/sys/fs/cgroup/$d"
        done
        mkdir "$root/sys/fs/cgroup/systemd" "$root/sys/fs/cgroup/unified"
        mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup "$root/sys/fs/cgroup/systemd"
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root/sys/fs/cgroup/unified"
        mount -o remount,ro,bind "$root/sys/fs/cgroup" 2>/dev/null || true

        mount -t tmpfs -o mode=0755,nosuid,size=64m dev "$root/dev"
        for d in null zero full random urandom tty; do
                touch "$root/dev/$d"
                mount --bind "/dev/$d" "$root/dev/$d"
        done
        mkdir "$root/dev/pts" "$root/dev/shm" "$root/dev/mqueue"
        mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$root/dev/pts"
        ln -s pts/ptmx "$root/dev/ptmx"
        mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
        ln -s /proc/self/fd "$root/dev/fd"
        ln -s /proc/self/fd/0 "$root/dev/stdin"
        ln -s /proc/self/fd/1 "$root/dev/stdout"
        ln -s /proc/self/fd/2 "$root/dev/stderr"

        mount -t tmpfs -o mode=0755,nosuid,nodev run "$root/run"
        mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$root/tmp"

        cd "$root"
        mkdir -p .oldroot
        pivot_root . .oldroot
        cd /
        umount -l /.oldroot
        rmdir /.oldroot 2>/dev/null || true
        # Like a container manager does (systemd leaves this to it in a container): mounts
        # must propagate back from the namespaces systemd makes, e.g. for the credentials
        # of LoadCredential=. Our own mount namespace keeps all of it away from the host.
        mount --make-rshared /

        local args=()
        for d in "${MASKED[@]}"; do
                args+=("systemd.mask=$d")
        done
        exec env -i container=unshare /lib/systemd/systemd --system "${args[@]}" "$@"
}

# ---------------------------------------------------------------------------------------
# outside

cmd_boot() {
        local dir=$1
        shift
        [[ $EUID -eq 0 ]] || die "must run as root"
        mkdir -p "$dir"
        [[ ! -e $dir/pid ]] || die "$dir already holds a container"
        dir=$(cd "$dir" && pwd -P)

        # Fresh cgroups below our own in every hierarchy systemd will see, so that the
        # container's cgroup namespace starts there and leaves nothing behind elsewhere.
        local name=dtask-systest-$$ h cgdirs=()
        for h in "${V1_HIERARCHIES[@]}" unified; do
                local own
                own=$(own_cgroup "$h") || die "not in a $h cgroup"
                own=${own%/}
                cgdirs+=("$CGROUP_FS/$h$own/$name")
        done
        printf '%s\n' "${cgdirs[@]}" >"$dir/cgroups"
        for h in "${cgdirs[@]}"; do
                mkdir "$h"
        done

        mkdir -p "$dir/mnt"
        # The launcher moves itself into those cgroups, then becomes unshare, which forks
        # PID 1 of the new namespaces: inner() above, then systemd.
        (
                for h in "${cgdirs[@]}"; do
                        echo "$BASHPID" >"$h/cgroup.procs"
                done
                exec unshare --mount --propagation private --pid --fork --cgroup --uts --ipc --net \
                        -- "$0" __inner "$dir/mnt" "$@"
        ) </dev/null >"$dir/console.log" 2>&1 &
        local launcher=$!
        echo "$launcher" >"$dir/launcher"

        # The container's PID 1 is the only child of unshare.
        local pid='' i
        for ((i = 0; i < 100; i++)); do
                pid=$(cat "/proc/$launcher/task/$launcher/children" 2>/dev/null || true)
                pid=${pid%% *}
                [[ -n $pid ]] && break
                kill -0 "$launcher" 2>/dev/null || break
                sleep 0.05
        done
        [[ -n $pid ]] || {
                cat "$dir/console.log" >&2 || true
                cmd_shutdown "$dir" 5 || true
                die "the container did not start"
        }
        echo "$pid" >"$dir/pid"
        # wait until systemd (not the setup shell) runs as PID 1
        for ((i = 0; i < 200; i++)); do
                [[ $(cat "/proc/$pid/comm" 2>/dev/null) == systemd ]] && break
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.05
        done
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == systemd ]] || {
                cat "$dir/console.log" >&2 || true
                cmd_shutdown "$dir" 5 || true
                die "systemd did not start in the container"
        }
        echo "$pid"
}

cmd_shutdown() {
        local dir=$1 timeout=${2:-30} pid='' launcher='' i
        [[ -d $dir ]] || return 0
        pid=$(cat "$dir/pid" 2>/dev/null || true)
        launcher=$(cat "$dir/launcher" 2>/dev/null || true)

        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
                timeout 10 nsenter -t "$pid" -a systemctl poweroff --no-block >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
                for ((i = 0; i < timeout * 10; i++)); do
                        kill -0 "$pid" 2>/dev/null || break
                        sleep 0.1
                done
                # killing PID 1 of a PID namespace kills everything in it
                kill -KILL "$pid" 2>/dev/null || true
        fi
        if [[ -n $launcher ]]; then
                for ((i = 0; i < 50; i++)); do
                        kill -0 "$launcher" 2>/dev/null || break
                        sleep 0.1
                done
                kill -KILL "$launcher" 2>/dev/null || true
        fi

        local rc=0 cg
        if [[ -f $dir/cgroups ]]; then
                while IFS= read -r cg; do
                        remove_cgroup_tree "$cg" || rc=1
                done <"$dir/cgroups"
        fi
        rm -f "$dir/pid" "$dir/launcher"
        return "$rc"
}

cmd_exec() {
        local dir=$1 pid
        shift
        pid=$(cat "$dir/pid") || die "no container in $dir"
        exec nsenter -t "$pid" -a -- "$@"
}

case ${1:-} in
__inner)
        shift
        inner "$@"
        ;;
boot)
        shift
        [[ $# -ge 1 ]] || die "usage: container.sh boot DIR [SYSTEMD-ARGS...]"
        cmd_boot "$@"
        ;;
shutdown)
        shift
        [[ $# -ge 1 ]] || die "usage: container.sh shutdown DIR [TIMEOUT]"
        cmd_shutdown "$@"
        ;;
exec)
        shift
        [[ $# -ge 2 ]] || die "usage: container.sh exec DIR COMMAND..."
        cmd_exec "$@"
        ;;
*)
        die "usage: container.sh boot|shutdown|exec DIR …"
        ;;
esac
