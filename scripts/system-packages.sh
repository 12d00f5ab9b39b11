#!/usr/bin/env bash
# Installs the Debian packages the tests talk to for real (a broker, an independent Modbus master,
# a serial-line tool, systemd's unit checker) and the C toolchain the ahead-of-time kernel needs,
# when they are missing.
# Idempotent; does nothing when all are present.
set -euo pipefail
need=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || need+=(mosquitto)
command -v mbpoll >/dev/null || need+=(mbpoll)
command -v socat >/dev/null || need+=(socat)
# A time-series server speaking the InfluxDB v2 write API, for the sink's tests (they start
# their own on a free port; the package's own service is not used).
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
# A real browser for the console's tests (Playwright drives it through executable_path: its own
# browser download is not reachable from every network).
command -v chromium >/dev/null || need+=(chromium)
# The Chinese font of printed receipts (gateway/ops/receipt_pdf.py).
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
# `systemd-analyze verify` checks the service unit (tests/service/test_unit.py); it needs no
# running systemd, so a container without one checks it too.
command -v systemd-analyze >/dev/null || need+=(systemd)
# The ahead-of-time billing kernel is a C extension: a compiler and the Python headers.
command -v cc >/dev/null || command -v gcc >/dev/null || need+=(gcc)
"${PYTHON:-python3}" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need+=(python3-dev)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged broker as a service on port 1883; the tests start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
# Likewise victoria-metrics' own service (port 8428): the sink's tests start their own server.
if command -v systemctl >/dev/null && systemctl is-active --quiet victoria-metrics 2>/dev/null; then
  $SUDO systemctl disable --now victoria-metrics >/dev/null 2>&1 || true
fi
