#!/usr/bin/env bash
# Set up everything fileserver needs on Debian 12, idempotently: apt packages, kernel headers for bcc,
# and the virtualenv with the package installed in editable mode. A second run installs nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"
say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    say "not root: skipping apt packages and kernel headers (run 'sudo make setup' for the kernel path)"
else
    # FILESERVER_SETUP=runtime (the Dockerfile): what the server needs, without the test and
    # benchmark tools (wrk, ab, chromium, nginx, h2load, ...) and the test extras.
    pkgs=(python3-bpfcc python3-venv python3-pip bpftool linux-headers-amd64 iproute2 curl procps)
    if [ "${FILESERVER_SETUP:-}" != runtime ]; then
        pkgs+=(wrk apache2-utils ethtool systemd chromium fonts-dejavu-core nginx-light nghttp2-client haproxy)
    fi
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing apt packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # nginx is only a benchmark contender, started by bench/run.py in its own namespace: keep
        # its package from starting a system-wide service on port 80 (policy-rc.d says "no").
        policy=/usr/sbin/policy-rc.d
        created_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && created_policy=1
        fi
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        [ "$created_policy" = 1 ] && rm -f "$policy"
        systemctl disable --now nginx haproxy >/dev/null 2>&1 || true
    else
        say "apt packages present"
    fi

    # bcc needs kernel headers. Network programs only need UAPI headers, so Debian's generic headers
    # work when /lib/modules/$(uname -r)/{build,source} point at them (DESIGN.md section 7).
    mod="/lib/modules/$(uname -r)"
    if [ -e "$mod/build/include/linux/kconfig.h" ] || [ -e "$mod/source/include/linux/kconfig.h" ]; then
        say "kernel headers for $(uname -r) found"
    else
        arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
        common_dir=${arch_dir%-amd64}-common
        if [ -n "$arch_dir" ] && [ -d "$common_dir" ]; then
            mkdir -p "$mod"
            ln -sfn "$arch_dir" "$mod/build"
            ln -sfn "$common_dir" "$mod/source"
            say "pointed $mod/build at $arch_dir and $mod/source at $common_dir for bcc"
        else
            say "WARNING: no Debian kernel headers found; the kernel path will be off"
        fi
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    say "creating virtualenv $venv (with system site-packages for bcc)"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp="$venv/.installed"
if [ ! -e "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
    say "installing fileserver into $venv"
    "$venv/bin/pip" install -q --upgrade pip >/dev/null
    if [ "${FILESERVER_SETUP:-}" = runtime ]; then
        "$venv/bin/pip" install -q -e "$here"
    else
        "$venv/bin/pip" install -q -e "$here[test]"
    fi
    touch "$stamp"
else
    say "virtualenv up to date"
fi
