#!/bin/sh
# Renders portd's mixin (packaging/mixin/*.libsonnet) into the files the
# packages ship: packaging/prometheus/portd-alerts.yml and
# packaging/grafana/portd.json, under ROOT (default: the repository).
# The suite renders into a temporary ROOT and requires the committed files
# to be byte for byte the same (tests/suite/mixin.rs).
#
#   packaging/mixin/render.sh [ROOT]
#
# Needs Debian's jsonnet (apt-get install jsonnet); no library.
set -eu
mixin=$(cd "$(dirname "$0")" && pwd)
root=${1:-$mixin/../..}
command -v jsonnet >/dev/null 2>&1 || {
    echo "render.sh: jsonnet not found (Debian package jsonnet)" >&2
    exit 1
}
mkdir -p "$root/packaging/prometheus" "$root/packaging/grafana"
for out in prometheus/portd-alerts.yml grafana/portd.json; do
    file=${out#*/}
    jsonnet -J "$mixin" -S -e "(import 'mixin.libsonnet').rendered['$file']" \
        > "$root/packaging/$out.tmp"
    mv "$root/packaging/$out.tmp" "$root/packaging/$out"
done
