#!/bin/sh
# Keeps the hand-written packaging in step with the code. Fails when
#   - a subcommand or an option that `portd --help` shows is not in portd(8);
#   - a section or key of config/portd.toml is not in portd.toml(5);
#   - a MESSAGE_ID or a PORTD_* journal field of src/publish/events.rs is not in
#     portd(8);
#   - the drop-in header the maintainer scripts look for is not the one
#     src/act/actuator.rs writes;
#   - a man page has roff warnings.
# Usage: packaging/check-man.sh [PORTD_BINARY]  (default target/release/portd)
set -eu
cd "$(dirname "$0")/.."
portd=${1:-${CARGO_TARGET_DIR:-target}/release/portd}
man8=packaging/man/portd.8
man5=packaging/man/portd.toml.5
failed=0
fail() { echo "check-man: $*" >&2; failed=1; }

# roff escapes a '-' in an option as '\-'; compare against the unescaped text.
plain8=$(sed 's/\\-/-/g' "$man8")
plain5=$(sed 's/\\-/-/g; s/\\(dq/"/g' "$man5")

commands=$("$portd" --help | awk '/^Commands:/{on=1; next} /^$/{on=0} on {print $1}' | grep -vx help)
[ -n "$commands" ] || fail "could not read the subcommands from $portd --help"
for c in $commands completions; do
    printf '%s\n' "$plain8" | grep -q "^\.B[IR]* $c\b" || fail "$man8 does not document subcommand '$c'"
    for opt in $("$portd" "$c" --help 2>/dev/null | grep -o '^ *\(-[a-zA-Z], \)\?--[a-z-]*' | sed 's/.*--/--/'); do
        printf '%s\n' "$plain8" | grep -q -- "$opt\b" || fail "$man8 does not document '$c $opt'"
    done
done

section=""
while IFS= read -r line; do
    case $line in
        \[*\]) section=$line
               printf '%s\n' "$plain5" | grep -qxF ".SH $section" || fail "$man5 has no section $section" ;;
        [a-z]*=*) key=${line%%[ =]*}
               printf '%s\n' "$plain5" | grep -q "^\.BR $key \" = \"" || fail "$man5 does not document $section $key" ;;
    esac
done < config/portd.toml

for id in $(grep -o '"[0-9a-f]\{32\}"' src/publish/events.rs | tr -d '"'); do
    grep -q "$id" "$man8" || fail "$man8 does not list MESSAGE_ID $id"
done

for field in $(grep -o '^ *portd_[a-z_]* =' src/publish/events.rs | sed 's/ *=//; s/^ *//' | tr a-z A-Z); do
    grep -q "$field" "$man8" || fail "$man8 does not describe the journal field $field"
done

header=$(sed -n 's/^ *"\(# Managed by portd\..*\)";$/\1/p' src/act/actuator.rs)
[ -n "$header" ] || fail "cannot find the drop-in header in src/act/actuator.rs"
for script in packaging/debian/postrm packaging/rpm/postun.sh; do
    # The scripts hold it in double quotes, with the backquotes escaped.
    quoted=$(printf '%s' "$header" | sed 's/`/\\`/g')
    grep -qF "header=\"$quoted\"" "$script" || fail "$script does not match the drop-in header of src/act/actuator.rs"
done

for page in "$man8" "$man5"; do
    warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null || true)
    [ -z "$warnings" ] || fail "$page: $warnings"
done

[ "$failed" -eq 0 ] && echo "check-man: man pages, policy keys, journal fields, MESSAGE_IDs and drop-in header are in step"
exit "$failed"
