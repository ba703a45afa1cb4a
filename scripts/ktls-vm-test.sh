#!/usr/bin/env bash
# Run a command inside a qemu VM booting Debian's kernel, with the kTLS
# modules loaded, and report whether it passed.  The host kernel has no
# CONFIG_TLS, so this is how tlsplice's kTLS path gets exercised.
#
# With no --payload, builds tlsplice and its kTLS integration test
# (tests/ktls: cargo build, cargo test --test ktls --no-run) and runs, in the
# VM, the C smoke test and then that test binary against the tlsplice binary
# (TLSPLICE_REQUIRE_KTLS=1, --test-threads=1).
#
# Usage: scripts/ktls-vm-test.sh [options]
#   --smoke-only         only the C smoke test (no cargo build)
#   --mib N              MiB each way in the bulk tests (TLSPLICE_KTLS_MIB,
#                        default 8)
#   --conns N            connections in the descriptor-leak test
#                        (TLSPLICE_KTLS_CONNS, default 1000)
#   --test-args 'ARGS'   extra arguments for the test binary (e.g. a name filter)
#   --payload DIR        copied to /payload in the VM (with the shared libraries
#                        its executables need) instead of the above
#   --cmd 'COMMAND'      run by /bin/sh in /payload (required with --payload)
#   --kernel-pkg NAME    Debian kernel image package (default: the newest
#                        linux-image-6.1.*-amd64[-unsigned] apt-cache offers)
#   --no-tls-stat-check  do not require TlsTxSw/TlsRxSw > 0 and
#                        TlsDecryptError == 0 after the command
#   --cmd-timeout SECS   timeout for the command inside the VM (default 420)
#   --timeout SECS       hard wall-clock limit for qemu (default 600)
#   --mem MB             guest memory (default 1024)
#   --log FILE           serial log (default $cache/last-run.log)
#   --bzimage            boot the compressed vmlinuz; by default the script
#                        boots the unpacked ELF vmlinux through PVH, which
#                        skips ~10 s of in-guest decompression under TCG
#   -h, --help
# Environment: KTLS_VM_CACHE (default $repo/target/ktls-vm).
# Exit status: 0 pass, 1 the command or a check failed, 2 setup/usage error.
set -euo pipefail

# Shared 2-core machine: run everything (apt, gcc, cpio, qemu) at lower priority.
if [[ -z "${KTLS_VM_NICED:-}" ]]; then
    export KTLS_VM_NICED=1
    exec nice -n 10 "$0" "$@"
fi

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/.." && pwd)
cache=${KTLS_VM_CACHE:-$repo/target/ktls-vm}

payload="" cmd="" kernel_pkg="" stat_check=1
cmd_timeout=420 qemu_timeout=600 mem=1024 log="" bzimage=0
smoke_only=0 mib=8 conns=1000 test_args=""

die() { echo "ktls-vm: error: $*" >&2; exit 2; }
note() { echo "ktls-vm: $*" >&2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
now() { echo "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

while (($#)); do
    case $1 in
        --smoke-only) smoke_only=1; shift ;;
        --mib) mib=${2:?--mib needs N}; shift 2 ;;
        --conns) conns=${2:?--conns needs N}; shift 2 ;;
        --test-args) test_args=${2?--test-args needs ARGS}; shift 2 ;;
        --payload) payload=${2:?--payload needs DIR}; shift 2 ;;
        --cmd) cmd=${2:?--cmd needs COMMAND}; shift 2 ;;
        --kernel-pkg) kernel_pkg=${2:?--kernel-pkg needs NAME}; shift 2 ;;
        --no-tls-stat-check) stat_check=0; shift ;;
        --cmd-timeout) cmd_timeout=${2:?}; shift 2 ;;
        --timeout) qemu_timeout=${2:?}; shift 2 ;;
        --mem) mem=${2:?}; shift 2 ;;
        --log) log=${2:?}; shift 2 ;;
        --bzimage) bzimage=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ $cmd_timeout =~ ^[0-9]+$ && $qemu_timeout =~ ^[0-9]+$ && $mem =~ ^[0-9]+$ &&
    $mib =~ ^[0-9]+$ && $conns =~ ^[0-9]+$ ]] ||
    die "--cmd-timeout, --timeout, --mem, --mib and --conns take whole numbers"
[[ $test_args =~ ^[A-Za-z0-9_=.,:\ -]*$ ]] || die "--test-args: unexpected characters"
((cmd_timeout < qemu_timeout)) || die "--cmd-timeout must be below --timeout"
if [[ -n $payload ]]; then
    [[ -d $payload ]] || die "--payload $payload is not a directory"
    [[ -n $cmd ]] || die "--payload needs --cmd"
    payload=$(cd "$payload" && pwd)
fi

t_start=$(now)
mkdir -p "$cache"
log=${log:-$cache/last-run.log}

# ---------------------------------------------------------------- host tools
apt_updated=0
apt_update_once() {
    if ((!apt_updated)); then
        note "apt-get update"
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
}
need_pkgs=()
need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2")
}
need qemu-system-x86_64 qemu-system-x86
need cpio cpio
need gzip gzip
need depmod kmod
need dpkg-deb dpkg
need xz xz-utils
[[ -x /bin/busybox ]] && /bin/busybox --list 2>/dev/null | grep -qx insmod &&
    ! ldd /bin/busybox >/dev/null 2>&1 || need_pkgs+=(busybox-static)
if [[ -z $payload ]]; then
    need gcc gcc
    [[ -e /usr/include/linux/tls.h && -e /usr/lib/x86_64-linux-gnu/libc.a ]] ||
        need_pkgs+=(libc6-dev linux-libc-dev)
fi
if ((${#need_pkgs[@]})); then
    note "installing: ${need_pkgs[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_pkgs[@]}" >/dev/null || die "apt-get install ${need_pkgs[*]} failed"
fi
[[ $(id -u) == 0 ]] || note "not root: apt-get install may fail"
ensure_tool() { # ensure_tool COMMAND PACKAGE: install later, only when needed
    command -v "$1" >/dev/null 2>&1 && return 0
    note "installing: $2"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null ||
        die "apt-get install $2 failed"
}

# ------------------------------------------------------------ kernel package
pick_kernel_pkg() {
    apt-cache pkgnames linux-image-6.1. 2>/dev/null |
        grep -E '^linux-image-6\.1\.[0-9]+-[0-9]+-amd64(-unsigned)?$' | sort -V | tail -n 1
}
if [[ -z $kernel_pkg ]]; then
    kernel_pkg=$(pick_kernel_pkg || true)
    if [[ -z $kernel_pkg ]]; then
        apt_update_once
        kernel_pkg=$(pick_kernel_pkg || true)
    fi
    # With no apt lists at all, fall back to whatever the cache already holds.
    if [[ -z $kernel_pkg ]]; then
        kernel_pkg=$(ls "$cache/kernels" 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    [[ -n $kernel_pkg ]] || die "apt-cache offers no linux-image-6.1.*-amd64 package"
fi
[[ $kernel_pkg =~ ^[a-z0-9][a-z0-9.+-]*$ ]] || die "bad package name: $kernel_pkg"

# The ELF kernel inside the bzImage (what scripts/extract-vmlinux does):
# try each compressor's magic, keep the first output that is an ELF file.
extract_vmlinux() { # extract_vmlinux BZIMAGE OUT
    local magic dec off
    for pair in $'\xfd7zXZ:xz -dcq --single-stream' $'\x28\xb5\x2f\xfd:zstd -dcq' \
        $'\x1f\x8b\x08:gzip -dcq'; do
        magic=${pair%%:*} dec=${pair#*:}
        command -v "${dec%% *}" >/dev/null 2>&1 || continue
        for off in $(LC_ALL=C grep -obUa "$magic" "$1" 2>/dev/null | head -n 3 | cut -d: -f1); do
            tail -c +"$((off + 1))" "$1" | $dec >"$2.tmp" 2>/dev/null || true
            if [[ $(head -c 4 "$2.tmp" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
                mv "$2.tmp" "$2"
                return 0
            fi
        done
    done
    rm -f "$2.tmp"
    return 1
}

kdir=$cache/kernels/$kernel_pkg
t_dl=0 t_unpack=0
exec 9>"$cache/.lock"
flock -w 900 9 || die "could not lock $cache/.lock"
if [[ ! -e $kdir/.complete ]]; then
    mkdir -p "$cache/debs"
    deb=$(ls "$cache/debs/${kernel_pkg}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z $deb ]]; then
        note "downloading $kernel_pkg"
        t0=$(now)
        # (root: apt warns that _apt cannot write here and downloads unsandboxed)
        (cd "$cache/debs" && apt-get download -q "$kernel_pkg" 2>&1) |
            grep -v -e '^W: Download is performed unsandboxed' -e '^Get:' -e '^$' >&2 || true
        deb=$(ls "$cache/debs/${kernel_pkg}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
        if [[ -z $deb ]]; then
            apt_update_once
            (cd "$cache/debs" && apt-get download -qq "$kernel_pkg") || die "apt-get download $kernel_pkg failed"
            deb=$(ls "$cache/debs/${kernel_pkg}"_*.deb | sort -V | tail -n 1)
        fi
        t_dl=$(elapsed "$t0" "$(now)")
    fi
    note "unpacking $(basename "$deb")"
    t0=$(now)
    rm -rf "$kdir" && mkdir -p "$kdir"
    dpkg-deb -x "$deb" "$kdir/root"
    kver=$(ls "$kdir/root/lib/modules" | head -n 1)
    [[ -n $kver && -d $kdir/root/lib/modules/$kver/kernel ]] || die "$deb has no modules"
    vmlinuz=$(ls "$kdir/root/boot/vmlinuz-"* 2>/dev/null | head -n 1)
    [[ -n $vmlinuz ]] || die "$deb has no /boot/vmlinuz-*"
    # The package does not ship modules.dep (its postinst runs depmod): make one.
    depmod -b "$kdir/root" "$kver" || die "depmod failed"
    echo "$kver" >"$kdir/kver"
    ln -sf "${vmlinuz#"$kdir/"}" "$kdir/vmlinuz"
    touch "$kdir/.complete"
    t_unpack=$(elapsed "$t0" "$(now)")
fi
if [[ ! -e $kdir/vmlinux && ! -e $kdir/.no-vmlinux ]]; then
    t0=$(now)
    extract_vmlinux "$kdir/vmlinuz" "$kdir/vmlinux" || {
        note "no ELF vmlinux inside $(readlink "$kdir/vmlinuz"); booting the bzImage"
        touch "$kdir/.no-vmlinux"
    }
    t_unpack=$(awk -v a="$t_unpack" -v b="$(elapsed "$t0" "$(now)")" 'BEGIN { printf "%.1f", a + b }')
fi
flock -u 9
kver=$(cat "$kdir/kver")
moddir=$kdir/root/lib/modules/$kver

# ---------------------------------------------------------- module selection
# Roots: what kTLS needs for AES-GCM and ChaCha20-Poly1305.  The crypto API
# looks algorithms up by name ("gcm(aes)", "rfc7539(chacha20,poly1305)"), so
# the implementations are roots too; modules.dep supplies the rest.
roots=(tls gcm ghash-generic ghash-clmulni-intel ctr seqiv aesni-intel
    chacha20poly1305 chacha_generic chacha-x86_64 poly1305_generic poly1305-x86_64)
declare -A mod_path=() mod_deps=() seen=()
while IFS= read -r line; do
    path=${line%%:*}
    name=${path##*/}; name=${name%%.ko*}; name=${name//-/_}
    mod_path[$name]=$path
    mod_deps[$name]=${line#*:}
done <"$moddir/modules.dep"
builtin_names=" $(sed -e 's|.*/||' -e 's|\.ko.*||' -e 's|-|_|g' "$moddir/modules.builtin" | tr '\n' ' ') "
order=()
visit() { # depth-first post-order: dependencies before the module
    local n=$1 d dn
    [[ -n ${seen[$n]:-} ]] && return
    seen[$n]=1
    for d in ${mod_deps[$n]}; do
        dn=${d##*/}; dn=${dn%%.ko*}; dn=${dn//-/_}
        visit "$dn"
    done
    order+=("$n")
}
for r in "${roots[@]}"; do
    n=${r//-/_}
    if [[ -n ${mod_path[$n]:-} ]]; then
        visit "$n"
    elif [[ $builtin_names == *" $n "* ]]; then
        :
    else
        note "module $r: not in $kernel_pkg (skipped)"
    fi
done
[[ -n ${mod_path[tls]:-} || $builtin_names == *" tls "* ]] || die "$kernel_pkg has no tls module"

# ------------------------------------------------------------------ payload
work=$(mktemp -d "$cache/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
t_build=0
if [[ -z $payload ]]; then
    payload=$work/payload
    mkdir -p "$payload"
    gcc -O2 -static -Wall -Wextra -o "$payload/smoke" "$script_dir/ktls-vm/smoke.c" ||
        die "building smoke.c failed"
    if ((smoke_only)); then
        cmd=${cmd:-./smoke}
    else
        [[ -z $cmd ]] || die "--cmd needs --payload (or --smoke-only)"
        command -v cargo >/dev/null 2>&1 || die "cargo not found"
        t0=$(now)
        note "cargo build; cargo test --test ktls --no-run"
        # JSON on stdout (artifacts), human-readable diagnostics on stderr.
        bin=$(cd "$repo" && cargo build --bin tlsplice --message-format=json-render-diagnostics |
            grep '"reason":"compiler-artifact"' | grep '"kind":\["bin"\]' |
            grep '"name":"tlsplice"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1) ||
            die "cargo build failed"
        test_bin=$(cd "$repo" && cargo test --test ktls --no-run --message-format=json-render-diagnostics |
            grep '"reason":"compiler-artifact"' | grep '"kind":\["test"\]' |
            grep '"name":"ktls"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1) ||
            die "cargo test --no-run failed"
        [[ -x $bin ]] || die "cargo build reported no tlsplice executable"
        [[ -x $test_bin ]] || die "cargo test reported no ktls test executable"
        # Debug info is most of a debug build's size, and the initramfs lives
        # in guest RAM: leave it out (symbols stay, for backtraces).
        copy_bin() {
            if command -v strip >/dev/null 2>&1; then
                strip --strip-debug -o "$2" "$1" || die "strip $1 failed"
            else
                cp "$1" "$2"
            fi
        }
        copy_bin "$bin" "$payload/tlsplice"
        copy_bin "$test_bin" "$payload/ktls-tests"
        t_build=$(elapsed "$t0" "$(now)")
        note "payload: $(du -sh "$payload" | cut -f1) (tlsplice from $bin, tests from $test_bin)"
        # Both run even if the first fails; the markers say which failed.
        cmd="./smoke; s=\$?; echo KTLS-VM-SMOKE-EXIT=\$s
TLSPLICE_BIN=/payload/tlsplice TLSPLICE_REQUIRE_KTLS=1 TLSPLICE_KTLS_MIB=$mib TLSPLICE_KTLS_CONNS=$conns RUST_BACKTRACE=1 ./ktls-tests --test-threads=1 --nocapture $test_args; t=\$?; echo KTLS-VM-TESTS-EXIT=\$t
[ \$s = 0 ] && [ \$t = 0 ]"
    fi
fi

# ---------------------------------------------------------------- initramfs
t0=$(now)
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,modules,payload,usr/bin,usr/sbin}
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do
    [[ $a == busybox || -e $root/bin/$a ]] || ln -s busybox "$root/bin/$a"
done
modlist=()
for n in "${order[@]}"; do
    src=$moddir/${mod_path[$n]}
    # busybox insmod takes plain .ko: decompress .ko.xz/.ko.zst/.ko.gz here.
    case $src in
        *.ko) cp "$src" "$root/modules/$n.ko" ;;
        *.ko.xz) xz -dc "$src" >"$root/modules/$n.ko" ;;
        *.ko.zst) ensure_tool zstd zstd; zstd -dcq "$src" >"$root/modules/$n.ko" ;;
        *.ko.gz) gzip -dc "$src" >"$root/modules/$n.ko" ;;
        *) die "unknown module format: $src" ;;
    esac
    modlist+=("$n")
done
printf '%s\n' "${modlist[@]}" >"$root/modules/order"

cp -a "$payload/." "$root/payload/"
# Shared libraries of dynamic executables, at the paths ldd reports (this
# includes the loader, e.g. /lib64/ld-linux-x86-64.so.2).
declare -A libs=()
while IFS= read -r -d '' f; do
    head -c 4 "$f" 2>/dev/null | grep -q $'^\x7fELF' || continue
    out=$(ldd "$f" 2>/dev/null) || continue
    while read -r l; do
        case $l in
            *"=> not found"*) die "ldd $f: $l" ;;
            *"=> /"*) p=${l#*=> }; libs[${p%% (*}]=1 ;;
            /*) libs[${l%% (*}]=1 ;;
        esac
    done <<<"$out"
done < <(find "$payload" -type f -perm -u+x -print0)
libdirs=""
for p in "${!libs[@]}"; do
    mkdir -p "$root$(dirname "$p")"
    cp -L "$p" "$root$p"
    d=$(dirname "$p")
    [[ ":$libdirs:" == *":$d:"* ]] || libdirs=${libdirs:+$libdirs:}$d
done
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
printf 'hosts: files\n' >"$root/etc/nsswitch.conf"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '%s\n' "$cmd" >"$root/ktls-vm-cmd"

cat >"$root/init" <<EOF
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp TMPDIR=/tmp
export LD_LIBRARY_PATH="$libdirs"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs tmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "KTLS-VM-INIT uptime=\$(cut -d' ' -f1 /proc/uptime) kernel=\$(uname -r)"
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
while read -r m; do
    insmod /modules/\$m.ko || echo "KTLS-VM-WARN insmod \$m failed"
done </modules/order
echo "KTLS-VM-ULP: \$(cat /proc/sys/net/ipv4/tcp_available_ulp)"
echo "KTLS-VM-CMD-BEGIN"
cd /payload
# Watchdog: TERM after the timeout, KILL 5 s later (busybox timeout never KILLs).
/bin/sh /ktls-vm-cmd &
cmd_pid=\$!
(
    sleep $cmd_timeout
    echo "KTLS-VM-TIMEOUT after ${cmd_timeout}s"
    kill -TERM \$cmd_pid 2>/dev/null
    sleep 5
    kill -KILL \$cmd_pid 2>/dev/null
) &
wd_pid=\$!
wait \$cmd_pid
rc=\$?
kill \$wd_pid 2>/dev/null
cd /
echo "KTLS-VM-EXIT=\$rc"
echo "KTLS-VM-TLS-STAT-BEGIN"
cat /proc/net/tls_stat
echo "KTLS-VM-TLS-STAT-END uptime=\$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
EOF
chmod 755 "$root/init"
initrd=$work/initramfs.cpio.gz
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --quiet --owner=0:0 | gzip -1 >"$initrd")
t_initrd=$(elapsed "$t0" "$(now)")
note "initramfs: $(du -h "$initrd" | cut -f1), ${#modlist[@]} modules: ${modlist[*]}"

# --------------------------------------------------------------------- boot
boot_image=$kdir/vmlinuz boot_how="bzImage"
if ((!bzimage)) && [[ -s $kdir/vmlinux ]]; then boot_image=$kdir/vmlinux boot_how="vmlinux via PVH"; fi
note "booting $kernel_pkg ($kver, $boot_how), timeout ${qemu_timeout}s, log $log"
mkdir -p "$(dirname "$log")"
: >"$log"
t_boot=$(now)
set +e
timeout -k 10 "$qemu_timeout" qemu-system-x86_64 -accel tcg -cpu max -m "$mem" \
    -nographic -no-reboot -nic none \
    -kernel "$boot_image" -initrd "$initrd" \
    -append 'console=ttyS0 quiet panic=-1' </dev/null 2>&1 |
    while IFS= read -r line; do
        line=${line%$'\r'}
        printf '%s\n' "$line"
        printf '%s\n' "$line" >>"$log"
        case $line in
            *KTLS-VM-INIT*) [[ -e $work/t_init ]] || now >"$work/t_init" ;;
            KTLS-VM-CMD-BEGIN) now >"$work/t_cmd" ;;
            KTLS-VM-EXIT=*) now >"$work/t_exit" ;;
        esac
    done
qemu_rc=${PIPESTATUS[0]}
set -e
t_end=$(now)

# ------------------------------------------------------------------- verdict
fail=()
if ((qemu_rc == 124 || qemu_rc == 137)); then
    fail+=("qemu killed after ${qemu_timeout}s (timeout)")
elif ((qemu_rc != 0)); then
    fail+=("qemu exit status $qemu_rc")
fi
ulp=$(sed -n 's/^KTLS-VM-ULP: //p' "$log" | tail -n 1)
[[ " $ulp " == *" tls "* ]] || fail+=("tls not in tcp_available_ulp ('$ulp')")
cmd_rc=$(sed -n 's/^KTLS-VM-EXIT=\([0-9]*\)$/\1/p' "$log" | tail -n 1)
if [[ -z $cmd_rc ]]; then
    fail+=("no KTLS-VM-EXIT marker")
elif [[ $cmd_rc != 0 ]]; then
    why=""
    if grep -q 'KTLS-VM-TIMEOUT' "$log"; then why=" (killed by the ${cmd_timeout}s --cmd-timeout)"; fi
    fail+=("command exit status $cmd_rc$why")
fi
stat_val() { sed -n '/^KTLS-VM-TLS-STAT-BEGIN/,/^KTLS-VM-TLS-STAT-END/p' "$log" | awk -v k="$1" '$1 == k { print $2 }' | tail -n 1; }
tx_sw=$(stat_val TlsTxSw) rx_sw=$(stat_val TlsRxSw) dec_err=$(stat_val TlsDecryptError)
if ((stat_check)); then
    [[ ${tx_sw:-0} -gt 0 ]] || fail+=("TlsTxSw=${tx_sw:-missing}, want > 0")
    [[ ${rx_sw:-0} -gt 0 ]] || fail+=("TlsRxSw=${rx_sw:-missing}, want > 0")
    [[ ${dec_err:-x} == 0 ]] || fail+=("TlsDecryptError=${dec_err:-missing}, want 0")
fi
smoke_rc=$(sed -n 's/^KTLS-VM-SMOKE-EXIT=\([0-9]*\)$/\1/p' "$log" | tail -n 1)
tests_rc=$(sed -n 's/^KTLS-VM-TESTS-EXIT=\([0-9]*\)$/\1/p' "$log" | tail -n 1)
[[ -z $smoke_rc || $smoke_rc == 0 ]] || fail+=("smoke test exit status $smoke_rc")
[[ -z $tests_rc || $tests_rc == 0 ]] || fail+=("ktls tests exit status $tests_rc")
grep -q '^KTLS-VM-WARN' "$log" && note "warnings: $(grep '^KTLS-VM-WARN' "$log" | tr '\n' ';')"

boot_to_init=n/a cmd_time=n/a
[[ -e $work/t_init ]] && boot_to_init=$(elapsed "$t_boot" "$(cat "$work/t_init")")s
[[ -e $work/t_cmd && -e $work/t_exit ]] && cmd_time=$(elapsed "$(cat "$work/t_cmd")" "$(cat "$work/t_exit")")s
echo
echo "==== ktls-vm summary ===="
echo "kernel:       $kernel_pkg ($kver, $boot_how)"
echo "command:      ${cmd//$'\n'/; }"
echo "ulp:          ${ulp:-?}"
echo "exit status:  ${cmd_rc:-none}${smoke_rc:+ (smoke $smoke_rc${tests_rc:+, ktls tests $tests_rc})}"
test_result=$(grep -E '^test result: ' "$log" | tail -n 1 || true)
[[ -z $test_result ]] || echo "ktls tests:   ${test_result#test result: }"
checked=""
((stat_check)) || checked=" (not checked)"
echo "tls_stat:     TlsTxSw=${tx_sw:-?} TlsRxSw=${rx_sw:-?} TlsDecryptError=${dec_err:-?}$checked"
echo "timings:      download ${t_dl}s, unpack ${t_unpack}s, build ${t_build}s, initramfs ${t_initrd}s, boot-to-init ${boot_to_init}, command ${cmd_time}, qemu $(elapsed "$t_boot" "$t_end")s, total $(elapsed "$t_start" "$t_end")s"
echo "log:          $log"
if ((${#fail[@]})); then
    printf 'RESULT: FAIL\n'
    printf '  - %s\n' "${fail[@]}"
    exit 1
fi
echo "RESULT: PASS"
