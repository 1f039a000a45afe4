# %post of the portd .rpm; $1 is the number of portd packages installed
# after this transaction: 1 on first install, 2 or more on upgrade.
# Mirrors systemd's %systemd_post macro (there is no rpmbuild here): the
# unit is enabled or not by the distribution's preset policy, not started.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset portd.service >/dev/null 2>&1 || :
fi
# Index portd.catalog, so `journalctl -x` explains portd's messages.
journalctl --update-catalog >/dev/null 2>&1 || :
