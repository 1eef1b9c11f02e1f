#!/usr/bin/env bash
# Installs the test peers (Postfix's smtp-sink/smtp-source, dnsmasq,
# Python's aiosmtpd, prometheus-client and dkimpy, openssl, OpenSSL headers for native-tls, strace), then runs the tests.
# Safe to run again: installed pieces are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v smtp-sink >/dev/null 2>&1 || need_apt+=(postfix)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# strace shows which files and directories the spool tests fsync;
# setpriv and unshare (util-linux) switch users in the submission tests.
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
# The install test (tests/install.rs) runs the README's steps in its own
# namespaces: systemd-tmpfiles makes the spool, ip brings up loopback.
command -v systemd-tmpfiles >/dev/null 2>&1 || need_apt+=(systemd-standalone-tmpfiles)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need_apt+=(iproute2)
# tests/dkim.rs makes keys with openssl genpkey, as an operator would.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  as_root apt-get update -qq
  # Postfix's installer asks what kind of mail system this is; the tests
  # only use its smtp-sink and smtp-source tools, never the Postfix daemon.
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  echo "installing: aiosmtpd"
  python3 -m pip install -q aiosmtpd
fi
# tests/dkim.rs verifies signatures with dkimpy (PyNaCl for Ed25519).
if ! python3 -c 'import dkim, nacl' >/dev/null 2>&1; then
  echo "installing: dkimpy, PyNaCl"
  python3 -m pip install -q dkimpy PyNaCl
fi
# tests/metrics.rs parses the metrics endpoint's scrape with it.
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  echo "installing: prometheus-client"
  python3 -m pip install -q prometheus-client
fi
# promtool, the Prometheus project's own checker of the text format, for
# tests/metrics.rs: unpacked from Debian's prometheus package into
# target/promtool rather than installed (installing would start a
# Prometheus server). Without it the test uses the Python parser alone.
if ! command -v promtool >/dev/null 2>&1 && [ ! -x target/promtool/usr/bin/promtool ]; then
  echo "fetching: promtool (Debian package prometheus)"
  mkdir -p target/promtool
  if ( cd target/promtool && { apt-get download prometheus >/dev/null 2>&1 ||
       { as_root apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; } &&
       dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb ); then :
  else
    echo "promtool unavailable: tests/metrics.rs checks the scrape with prometheus_client only"
  fi
fi

export PATH="$PATH:/usr/sbin:/sbin:$PWD/target/promtool/usr/bin"
cargo test --locked "$@"
