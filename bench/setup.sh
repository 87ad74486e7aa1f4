#!/usr/bin/env bash
# What `npm run bench` needs beyond the repository: OpenSSH for the ssh -R
# baseline (Debian's openssh-server and openssh-client). Run as root.
set -euo pipefail
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
fi
mkdir -p /run/sshd
echo "ssh -R baseline ready: $(ssh -V 2>&1)"
