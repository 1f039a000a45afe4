# %preun of the portd .rpm; $1 is 0 when portd is being erased, 1 or more
# on upgrade. Mirrors %systemd_preun: stop and disable on erase only.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now portd.service >/dev/null 2>&1 || :
    # Undo portd's changes while its binary is still here: restore the
    # range and reserved ports portd found before its first change, where
    # portd's values are still the live ones, and remove its drop-in.
    # `portd rollback` refuses when someone else changed the values since;
    # then they are left as they are. Never fail the erase for it.
    if [ -x /usr/sbin/portd ]; then
        /usr/sbin/portd rollback || \
            echo "portd: rollback not done (see above); the live port range is left as it is" >&2
    fi
fi
exit 0
