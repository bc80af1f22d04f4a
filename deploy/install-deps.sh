#!/usr/bin/env bash
# Installs the Debian packages tcpcopy needs on this host, only those that are missing:
#   libpcap-dev  headers that pypcap builds against
#   gcc, python3-dev  what pypcap and the mypyc-compiled hot path (setup.py) are built with
#   iproute2     ip netns / veth for the lab
#   nginx-light  the real HTTP server of the lab
#   ethtool      turns a lab veth's offloads off (the one test that copies without them)
#   curl         a real HTTP client for lab checks
#   nghttp2-client  h2load, the bounded HTTP/1.1 load generator of the lab (lab/load.py)
#   socat        runs the lab's server-first greeter, one handler per connection
#   supervisor   supervisord, which tcpcopy-cluster renders a config for and launches
#   redis-server the lab's Redis, a small-message protocol on persistent connections (lab/kvstore.py)
#   redis-tools  redis-benchmark and redis-cli, its bounded load and its counters
set -euo pipefail
wanted=(libpcap-dev gcc python3-dev iproute2 nginx-light ethtool curl nghttp2-client socat supervisor
        redis-server redis-tools)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing Debian packages: ${missing[*]}; run 'sudo apt-get install ${missing[*]}' or run this as root" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the packaged nginx and redis-server from starting a server in the host's own namespace.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
fi
trap '[ $created_policy = 1 ] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The packaged redis-server is enabled at boot, and a host's own policy-rc.d may let it start
# now: the lab runs its Redis servers inside its namespaces only, so the packaged one is
# stopped (through its own pid file) and disabled.
if [[ " ${missing[*]} " == *" redis-server "* ]]; then
  if [ -d /run/systemd/system ]; then
    systemctl disable --now redis-server.service >/dev/null 2>&1 || true
  else
    /etc/init.d/redis-server stop >/dev/null 2>&1 || true
    update-rc.d redis-server disable >/dev/null 2>&1 || true
  fi
fi
