#!/usr/bin/env bash
# Fetch the LibTorch 2.x headers of Debian trixie's libtorch-dev (no install: download + extract only) into
# $1 (default: build/torch2). Reuses the mirror this machine's apt is configured with; no host name is written here.
set -euo pipefail
dest=${1:-build/torch2}
pkgs=(libtorch-dev)
[ -d "$dest/usr/include/torch" ] && { echo "torch2 headers already in $dest"; exit 0; }

mirror=$(bash "$(dirname "$0")/../scripts/lib/debian-mirror.sh")  # the Debian archive of this machine's apt sources

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror trixie main" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::State::Status=/dev/null"
          -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
apt-get "${apt_opts[@]}" -qq update
(cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download "${pkgs[@]}")
mkdir -p "$dest"
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$dest"; done
grep -h 'TORCH_VERSION' "$dest/usr/include/torch/csrc/api/include/torch/version.h" | head -n 3
