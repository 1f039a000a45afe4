#!/bin/sh
# Lints and inspects the packages packaging/build.sh made, without
# installing anything on this machine:
#   - lintian: no errors on the .deb; rpmlint: no errors on the .rpm
#     (packaging/rpm/rpmlint.toml says which checks are filtered and why);
#   - the .deb extracted with dpkg-deb -x, the .rpm installed with
#     `rpm -i --root SCRATCH --nodeps --noscripts` into a scratch root: both
#     hold the expected files with the expected modes, the policy is a
#     conffile / %config(noreplace), both carry a changelog, and the
#     maintainer scripts parse and do what each distribution expects;
#   - the packaged unit passes `systemd-analyze verify` and its exposure
#     (`systemd-analyze security`) is at most 1.5 (docs/DESIGN.md, "Privileges"),
#     with the containers.conf drop-in at most 2.5.
# Usage: packaging/check-packages.sh
set -eu
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$(pwd)
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$repo/$target ;; esac

fail() { echo "check-packages: FAIL: $*" >&2; exit 1; }
ok() { echo "check-packages: ok: $*"; }

deb=$(ls "$target"/debian/portd_*.deb 2>/dev/null) || fail "no .deb; run packaging/build.sh"
rpm_file=$(ls "$target"/generate-rpm/portd-*.rpm 2>/dev/null) || fail "no .rpm; run packaging/build.sh"
[ "$(echo "$deb" | wc -l)" -eq 1 ] && [ "$(echo "$rpm_file" | wc -l)" -eq 1 ] || fail "more than one package in $target"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
scratch=$target/pkgcheck
rm -rf "$scratch"
mkdir -p "$scratch"

# --- linters ------------------------------------------------------------------

echo "--- lintian $deb"
lintian --fail-on error --display-info --pedantic "$deb" || fail "lintian reports errors"
ok "lintian: no errors"
echo "--- rpmlint $rpm_file"
rpmlint -c packaging/rpm/rpmlint.toml "$rpm_file" || fail "rpmlint reports errors"
ok "rpmlint: no errors"
rpm -K "$rpm_file" >/dev/null || fail "rpm -K: the .rpm's digests do not match"
ok "rpm -K: digests match"

# --- files ----------------------------------------------------------------------

# path mode, for both packages; then each distribution's own.
common="\
/etc/portd.toml 644
/usr/lib/systemd/catalog/portd.catalog 644
/usr/lib/systemd/system/portd.service 644
/usr/sbin/portd 755
/usr/share/bash-completion/completions/portd 644
/usr/share/doc/portd/examples/attribution.conf 644
/usr/share/doc/portd/examples/containers.conf 644
/usr/share/doc/portd/examples/metrics.conf 644
/usr/share/doc/portd/runbook.md 644
/usr/share/fish/vendor_completions.d/portd.fish 644
/usr/share/man/man5/portd.toml.5.gz 644
/usr/share/man/man8/portd.8.gz 644
/usr/share/portd/grafana/portd.json 644
/usr/share/portd/prometheus/portd-alerts.yml 644"
deb_only="\
/usr/share/doc/portd/changelog.Debian.gz 644
/usr/share/doc/portd/copyright 644
/usr/share/lintian/overrides/portd 644
/usr/share/zsh/vendor-completions/_portd 644"
rpm_only="\
/usr/share/zsh/site-functions/_portd 644"

dbpath=$(rpm --eval '%_dbpath')   # Debian's rpm keeps its database in ~/.rpmdb
files_with_modes() { # ROOT: "path mode" of every regular file under ROOT, but rpm's database
    (cd "$1" && find . -type f ! -path ".$dbpath/*" -printf '/%P %m\n') | sort
}

check_tree() { # NAME ROOT EXPECTED
    printf '%s\n' "$3" | sort > "$scratch/$1.expected"
    files_with_modes "$2" > "$scratch/$1.actual"
    diff -u "$scratch/$1.expected" "$scratch/$1.actual" >&2 \
        || fail "$1 files differ from the expected list (- expected, + found)"
}

check_payload() { # NAME ROOT: what is inside the files
    root=$2
    "$root/usr/sbin/portd" --version | grep -qx "portd $version" || fail "$1: /usr/sbin/portd --version is not 'portd $version'"
    cmp -s "$root/etc/portd.toml" config/portd.toml || fail "$1: /etc/portd.toml is not config/portd.toml"
    # The containers drop-in: as shipped, and granting what watching other
    # network namespaces needs (setns, other users' /proc/<pid>/ns/net).
    dropin=$root/usr/share/doc/portd/examples/containers.conf
    cmp -s "$dropin" systemd/examples/containers.conf || fail "$1: examples/containers.conf is not systemd/examples/containers.conf"
    for line in 'CapabilityBoundingSet=CAP_SYS_ADMIN CAP_SYS_PTRACE' 'AmbientCapabilities=CAP_SYS_ADMIN CAP_SYS_PTRACE' \
        'RestrictNamespaces=net' 'PrivateUsers=no'; do
        grep -qx "$line" "$dropin" || fail "$1: examples/containers.conf lacks '$line'"
    done
    cmp -s "$root/usr/lib/systemd/system/portd.service" systemd/portd.service || fail "$1: the unit is not systemd/portd.service"
    cmp -s "$root/usr/lib/systemd/catalog/portd.catalog" packaging/portd.catalog || fail "$1: the catalog is not packaging/portd.catalog"
    # The fleet view: alert rules and Grafana dashboard (README "Prometheus and Grafana").
    cmp -s "$root/usr/share/portd/prometheus/portd-alerts.yml" packaging/prometheus/portd-alerts.yml \
        || fail "$1: /usr/share/portd/prometheus/portd-alerts.yml is not packaging/prometheus/portd-alerts.yml"
    cmp -s "$root/usr/share/portd/grafana/portd.json" packaging/grafana/portd.json \
        || fail "$1: /usr/share/portd/grafana/portd.json is not packaging/grafana/portd.json"
    # The runbook every alert's runbook_url names (file:///usr/share/doc/portd/runbook.md#...).
    runbook=usr/share/doc/portd/runbook.md
    cmp -s "$root/$runbook" docs/runbook.md || fail "$1: /$runbook is not docs/runbook.md"
    grep -q 'runbook_url: "file:///usr/share/doc/portd/runbook.md#' "$root/usr/share/portd/prometheus/portd-alerts.yml" \
        || fail "$1: the packaged rules do not link to the packaged runbook"
    if command -v promtool >/dev/null 2>&1; then
        promtool check rules "$root/usr/share/portd/prometheus/portd-alerts.yml" >/dev/null \
            || fail "$1: promtool check rules fails on the packaged rules"
    fi
    for page in man8/portd.8 man5/portd.toml.5; do
        gzip -t "$root/usr/share/man/$page.gz" || fail "$1: $page.gz is not gzip"
        gzip -dc "$root/usr/share/man/$page.gz" | cmp -s - "packaging/man/${page#*/}" || fail "$1: $page differs from packaging/man"
    done
    grep -q 'complete -F _portd' "$root/usr/share/bash-completion/completions/portd" || fail "$1: bash completion is not portd's"
    grep -q '^complete -c portd' "$root/usr/share/fish/vendor_completions.d/portd.fish" || fail "$1: fish completion is not portd's"
    grep -q '^#compdef portd' "$root"/usr/share/zsh/*/_portd || fail "$1: zsh completion is not portd's"
    # The packaged unit, verified against the packaged binary and man pages.
    mkdir -p "$scratch/$1.verify"
    sed "s|^ExecStart=/usr/sbin/portd|ExecStart=$root/usr/sbin/portd|" \
        "$root/usr/lib/systemd/system/portd.service" > "$scratch/$1.verify/portd.service"
    MANPATH=$root/usr/share/man systemd-analyze verify "$scratch/$1.verify/portd.service" \
        || fail "$1: systemd-analyze verify fails on the packaged unit"
}

# .deb
dpkg-deb -x "$deb" "$scratch/deb"
dpkg-deb -e "$deb" "$scratch/deb.control"
check_tree deb "$scratch/deb" "$common
$deb_only"
check_payload deb "$scratch/deb"
[ "$(cat "$scratch/deb.control/conffiles")" = /etc/portd.toml ] || fail "deb: conffiles is not exactly /etc/portd.toml"
gzip -dc "$scratch/deb/usr/share/doc/portd/changelog.Debian.gz" | head -n 1 | grep -q "^portd ($version-1) " \
    || fail "deb: changelog.Debian.gz does not start with version $version-1"
for s in postinst prerm postrm; do
    sh -n "$scratch/deb.control/$s" || fail "deb: $s does not parse"
done
grep -q 'deb-systemd-helper enable portd.service' "$scratch/deb.control/postinst" || fail "deb: postinst does not enable portd.service"
grep -q 'deb-systemd-invoke $_dh_action portd.service' "$scratch/deb.control/postinst" || fail "deb: postinst does not start portd.service"
grep -q 'journalctl --update-catalog' "$scratch/deb.control/postinst" || fail "deb: postinst does not update the catalog"
grep -q 'deb-systemd-invoke stop portd.service' "$scratch/deb.control/prerm" || fail "deb: prerm does not stop portd.service"
grep -q '/usr/sbin/portd rollback' "$scratch/deb.control/prerm" || fail "deb: prerm does not roll back"
grep -q 'deb-systemd-helper purge portd.service' "$scratch/deb.control/postrm" || fail "deb: postrm does not purge the unit's state"
grep -q 'rm -rf /var/lib/portd' "$scratch/deb.control/postrm" || fail "deb: postrm does not remove /var/lib/portd on purge"
ok "deb: files, modes, conffile, changelog, maintainer scripts, unit verify"

# .rpm into a scratch root (no scriptlets: the root has no shell)
# Debian's rpm warns that packages should go through alien unless told.
quiet=$(rpm --help 2>&1 | grep -q -- --force-debian && echo --force-debian || true)
rpm --root "$scratch/rpm" --initdb
rpm --root "$scratch/rpm" -i $quiet --nodeps --noscripts "$rpm_file" || fail "rpm -i --root failed"
rpm --root "$scratch/rpm" -V --nodeps portd || fail "rpm -V: installed files do not match the package"
check_tree rpm "$scratch/rpm" "$common
$rpm_only"
check_payload rpm "$scratch/rpm"
[ "$(rpm --root "$scratch/rpm" -qc portd)" = /etc/portd.toml ] || fail "rpm: the config files are not exactly /etc/portd.toml"
rpm --root "$scratch/rpm" -q --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' portd | grep -qx 'cn /etc/portd.toml' \
    || fail "rpm: /etc/portd.toml is not %config(noreplace)"
rpm --root "$scratch/rpm" -q --changelog portd | grep -q "^\* .* - $version-1\$" || fail "rpm: no changelog entry for $version-1"
rpm -qp --scripts "$rpm_file" > "$scratch/rpm.scripts"
for want in 'systemctl --no-reload preset portd.service' 'journalctl --update-catalog' \
            'systemctl --no-reload disable --now portd.service' '/usr/sbin/portd rollback' \
            'systemctl try-restart portd.service' 'rm -rf /var/lib/portd'; do
    grep -qF "$want" "$scratch/rpm.scripts" || fail "rpm: no scriptlet runs '$want'"
done
for s in post preun postun; do
    sh -n "packaging/rpm/$s.sh" || fail "rpm: packaging/rpm/$s.sh does not parse"
done
ok "rpm: installed into a scratch root; files, modes, %config(noreplace), changelog, scriptlets, unit verify"

# --- exposure -------------------------------------------------------------------

exposure=$(systemd-analyze security --offline=yes "$scratch/deb/usr/lib/systemd/system/portd.service" 2>&1 \
    | sed -n 's/.*Overall exposure level for portd.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security gave no exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e <= 1.5) }' || fail "exposure of portd.service is $exposure, above 1.5"
ok "systemd-analyze security portd.service: exposure $exposure (at most 1.5)"
# With the containers.conf drop-in (watching other network namespaces): at
# most 2.5. The unit and the drop-in from the .deb, in a scratch root.
sroot=$scratch/security-root
mkdir -p "$sroot/etc/systemd/system/portd.service.d" "$sroot/usr/sbin"
cp "$scratch/deb/usr/lib/systemd/system/portd.service" "$sroot/etc/systemd/system/"
cp "$scratch/deb/usr/share/doc/portd/examples/containers.conf" "$sroot/etc/systemd/system/portd.service.d/"
cp "$scratch/deb/usr/sbin/portd" "$sroot/usr/sbin/"
exposure=$(systemd-analyze security --offline=yes --root="$sroot" portd.service 2>&1 \
    | sed -n 's/.*Overall exposure level for portd.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security gave no exposure level with containers.conf"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.5) }' || fail "exposure of portd.service with containers.conf is $exposure, above 2.5"
ok "systemd-analyze security portd.service + containers.conf: exposure $exposure (at most 2.5)"
