#!/usr/bin/env bash
# Prints the Debian archive URI this machine's apt is configured with (no host name is written in xpo's scripts):
# the first deb source, in deb822 .sources files and then one-line .list files, whose suite is a release's main
# suite (no "-security"/"-updates" suffix) and which is signed, if at all, by the Debian archive keyring.
# $XPO_DEBIAN_MIRROR overrides it. Exits 1 with a message on stderr when there is none.
set -euo pipefail
if [ -n "${XPO_DEBIAN_MIRROR:-}" ]; then echo "$XPO_DEBIAN_MIRROR"; exit 0; fi
etc=${XPO_APT_ETC:-/etc/apt}  # where apt is configured (another folder only to test this script)
mirror=""
shopt -s nullglob
sources=("$etc"/sources.list.d/*.sources)
if [ ${#sources[@]} -gt 0 ]; then
  # deb822: stanzas separated by blank lines; fields Types, URIs, Suites, Signed-By.
  mirror=$(awk '
    function flush() {
      if (!done && types ~ /(^| )deb( |$)/ && uris != "" && (signed == "" || signed ~ /debian-archive-keyring/)) {
        n = split(suites, s, " ")
        for (i = 1; i <= n; i++) if (s[i] !~ /-/) { split(uris, u, " "); print u[1]; done = 1; exit }
      }
      types = uris = suites = signed = ""
    }
    /^[ \t]*$/ { flush(); next }
    /^#/ { next }
    /^Types:/ { $1 = ""; types = $0 }
    /^URIs:/ { $1 = ""; uris = $0; sub(/^ +/, "", uris) }
    /^Suites:/ { $1 = ""; suites = $0 }
    /^Signed-By:/ { $1 = ""; signed = $0 }
    END { flush() }' "${sources[@]}")
fi
if [ -z "$mirror" ]; then
  lists=("$etc"/sources.list "$etc"/sources.list.d/*.list)
  existing=()
  for f in "${lists[@]}"; do [ -f "$f" ] && existing+=("$f"); done
  if [ ${#existing[@]} -gt 0 ]; then
    # deb [options] URI suite components...
    mirror=$(awk '$1 == "deb" {
        opts = ""; i = 2
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
        if (opts != "" && opts ~ /signed-by/ && opts !~ /debian-archive-keyring/) next
        if ($(i + 1) !~ /-/) { print $i; exit }
      }' "${existing[@]}")
  fi
fi
[ -n "$mirror" ] || { echo "debian-mirror: no Debian archive found in the apt sources (set XPO_DEBIAN_MIRROR)" >&2; exit 1; }
echo "$mirror"
