# %postun of the portd .rpm; $1 is 0 after an erase, 1 or more after an
# upgrade. Mirrors %systemd_postun_with_restart.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
    systemctl try-restart portd.service >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
    # A drop-in portd wrote and did not remove (its rollback was refused or
    # failed): any /etc/sysctl.d/*.conf whose first line is portd's header,
    # whatever name persist.file gave it.
    header="# Managed by portd. Do not edit: portd rewrites this file and \`portd rollback\` removes it."
    for f in /etc/sysctl.d/*.conf; do
        if [ -f "$f" ] && [ ! -L "$f" ] && [ "$(head -n 1 "$f")" = "$header" ]; then
            rm -f "$f"
        fi
    done
    # State: original values, history, alert state, lock.
    rm -rf /var/lib/portd
    journalctl --update-catalog >/dev/null 2>&1 || :
fi
exit 0
