// The alert rules: packaging/prometheus/portd-alerts.yml once rendered.
// Each rule's expression, `for:` and severity were measured against real
// loads through a real Prometheus (docs/ramps.md, "The alert rules in a real
// Prometheus"); only the selector and the cluster label come from _config.
// Every rule has promtool cases in tests/prometheus/ and a section in
// docs/runbook.md, which its runbook_url names.
{
  local c = self._config,

  // `metric{<selector>, <extra>}`, or the bare name when both are empty.
  local sel(metric, extra='') =
    local parts = std.filter(function(p) p != '', [c.portdSelector, extra]);
    if parts == [] then metric else '%s{%s}' % [metric, std.join(', ', parts)],

  // Labels a by/on clause keeps: the cluster label first, where configured.
  local keep(labels) =
    std.join(', ', std.filter(function(l) l != '', [c.clusterLabel] + labels)),

  local runbook(name) = '%s#%s' % [c.runbookURLBase, std.asciiLower(name)],

  // A text block as one line, as YAML's `>-` would fold it: notifications
  // wrap it themselves.
  local fold(text) = std.join(' ', std.split(std.rstripChars(text, '\n'), '\n')),

  // One alert; `for` null leaves the field out (Prometheus' default, 0).
  local alert(name, expr, forDuration, severity, summary, description) = {
    alert: name,
    expr: expr,
    labels: { severity: severity },
    annotations: {
      summary: summary,
      description: fold(description),
      runbook_url: runbook(name),
    },
  } + (if forDuration == null then {} else { 'for': forDuration }),

  // Where an alert names the host, and the namespace for the per-namespace
  // ones: a pod as namespace/name (`pod` is its name alone, or its UID
  // where no namespace is known), else a container (its name, or
  // runtime:shortid), else the namespace's inode.
  local where = 'on {{ $labels.instance }}',
  local nsName = '{{ with $labels.pod }}pod {{ with $labels.pod_namespace }}{{ . }}/{{ end }}{{ $labels.pod }}{{ else }}{{ with $labels.container }}container {{ . }}{{ else }}network namespace {{ $labels.netns }}{{ end }}{{ end }}',

  prometheusAlerts+:: {
    groups+: [{
      name: 'portd',
      rules: [
        // portd_alert_level already applies the policy's thresholds, hold
        // and hysteresis: the rules follow it rather than repeat them.
        alert(
          'PortdEphemeralPortsWarning',
          |||
            %s and %s == 1
          ||| % [sel('portd_headline_usage_ratio'), sel('portd_alert_level')],
          '1m',
          'warning',
          'Ephemeral ports {{ $value | humanizePercentage }} used ' + where,
          |||
            One destination (local address, remote address, remote port) or the
            UDP pool uses {{ $value | humanizePercentage }} of the ephemeral ports
            it can get. connect() slows down about tenfold at 50 % and fails with
            EADDRNOTAVAIL at 100 %. Run `portd status --processes` on the host;
            `journalctl -x -t portd` explains portd's alerts.
          |||,
        ),
        alert(
          'PortdEphemeralPortsCritical',
          |||
            %s and %s == 2
          ||| % [sel('portd_headline_usage_ratio'), sel('portd_alert_level')],
          '0m',
          'critical',
          'Ephemeral ports critical ({{ $value | humanizePercentage }}) ' + where,
          |||
            connect() towards the busiest destination is already slow and close
            to failing with EADDRNOTAVAIL. In mode "auto" portd widens the range
            within its policy; check PortdWideningBlocked and the journal
            (`journalctl -x -t portd`).
          |||,
        ),
        // portd's forecast (the growth of each destination seen on two
        // censuses in a row, revised every poll; +Inf when none grows towards
        // exhaustion) says a destination or pool runs out soon. portd has
        // acted on it already (an early warning, in mode "auto" a wider
        // range); this pages a human when it still runs out.
        alert(
          'PortdExhaustionForecast',
          |||
            %s < %d
          ||| % [sel('portd_time_to_exhaustion_seconds'), c.exhaustionForecastSeconds],
          '0m',
          'critical',
          'Ephemeral ports run out in {{ $value | humanizeDuration }} ' + where,
          |||
            At its present growth a destination or pool runs out of ephemeral
            ports in {{ $value | humanizeDuration }}: connect() will then fail
            with EADDRNOTAVAIL. `journalctl -x -t portd` names it and the
            remedies (PORTD_REMEDY); `rate(portd_connect_attempts_total[1m])`
            is the namespace's connection rate.
          |||,
        ),
        // Every port towards a destination (or of a pool) is taken:
        // connect() fails now.
        alert(
          'PortdPortsExhausted',
          |||
            %s >= 1
          ||| % [sel('portd_headline_usage_ratio')],
          '0m',
          'critical',
          'Ephemeral ports exhausted ' + where,
          |||
            connect() towards the busiest destination fails now with
            EADDRNOTAVAIL. `journalctl -x -t portd` (ports-exhausted) names
            every exhausted destination and the remedies.
          |||,
        ),
        // Usage calls for a wider range, and portd may not or cannot write
        // it (reason: cooldown, change-cap, at-bound, outside-bounds,
        // yielded, pinned, foreign-dropin, fewer-usable-ports, write-failed).
        // Mode "advise" is left out: there the usage alerts are the point.
        alert(
          'PortdWideningBlocked',
          |||
            %s == 1 and ignoring(reason) %s >= 1
          ||| % [sel('portd_widening_blocked', 'reason!="advise"'), sel('portd_alert_level')],
          '10m',
          'warning',
          'portd cannot widen ip_local_port_range ' + where + ': {{ $labels.reason }}',
          |||
            portd would widen net.ipv4.ip_local_port_range but is held back
            ({{ $labels.reason }}). `portd check --plan` shows what it would do
            and which sysctl.d file sets the range at boot.
          |||,
        ),
        // portd rewrites the file after every poll (every 2 s by default,
        // portd.toml [poll] interval), with or without a full census.
        alert(
          'PortdMetricsStale',
          |||
            time() - %s > %d
          ||| % [sel('portd_poll_timestamp_seconds'), c.metricsStaleSeconds],
          '5m',
          'warning',
          'portd has not polled for {{ $value | humanizeDuration }} ' + where,
          |||
            portd is stopped, stuck, or cannot write its metrics file
            (`systemctl status portd`, `journalctl -u portd`).
          |||,
        ),
        // node_exporter answers, but portd's series are gone (the file was
        // removed, the textfile directory changed, portd was removed):
        // PortdMetricsStale cannot see a series that is not there. Fires for
        // an hour after the series went; a host that is down is left to the
        // alerts on `up`.
        alert(
          'PortdMetricsMissing',
          |||
            (max_over_time(%s[1h]) unless %s)
            and on (%s) %s == 1
          ||| % [
            sel('portd_poll_timestamp_seconds'),
            sel('portd_poll_timestamp_seconds'),
            keep(['instance']),
            sel('up'),
          ],
          '5m',
          'warning',
          "portd's metrics are gone from {{ $labels.instance }}",
          |||
            node_exporter no longer exports portd's textfile metrics. Check
            that portd runs (`systemctl status portd`), that [metrics] file
            in /etc/portd.toml is in node_exporter's textfile directory, and
            the node_textfile_scrape_error metric.
          |||,
        ),
        // Between full censuses portd relies on O(1) kernel counters, up to
        // the policy's max_staleness (5m by default); a census three times
        // older than that means censuses fail or hang.
        alert(
          'PortdCensusStale',
          |||
            time() - %s > %d
          ||| % [sel('portd_census_timestamp_seconds'), c.censusStaleSeconds],
          '5m',
          'warning',
          "portd's last socket census is {{ $value | humanizeDuration }} old " + where,
          |||
            portd has not completed a full census of the socket tables for
            {{ $value | humanizeDuration }}, three times the policy's longest
            interval between censuses (max_staleness, 5m by default). It
            still polls the kernel's counters, but its usage per destination
            and its forecast are that old. Censuses fail or hang: see
            PortdCensusFailing, `portd status` and `journalctl -u portd`.
          |||,
        ),
        alert(
          'PortdCensusFailing',
          |||
            increase(%s[10m]) > 0
          ||| % [sel('portd_census_failures_total')],
          '10m',
          'warning',
          'portd censuses fail ' + where + ' ({{ $labels.reason }})',
          |||
            Reading the socket tables failed ("error") or took longer than the
            watchdog interval ("abandoned"); the journal says why.
          |||,
        ),
        alert(
          'PortdYieldedToAdmin',
          |||
            %s == 1
          ||| % [sel('portd_yielded')],
          '1h',
          'info',
          'portd only advises ' + where + ': someone else changed the port range',
          |||
            Someone changed the values portd wrote; portd stopped changing them
            until `systemctl reload portd`.
          |||,
        ),
        alert(
          'PortdRangeChangingOften',
          |||
            increase(%s[6h]) >= %d
          ||| % [sel('portd_range_changes_total'), c.rangeChangesIn6h],
          null,
          'info',
          'portd widened the port range {{ $value }} times in 6 h ' + where,
          |||
            Widening keeps up with a load that keeps growing; find the client
            that opens the connections (`portd status --processes`).
          |||,
        ),
        // The failure witness (BPF, portd(8) FAILURE WITNESS) saw the kernel
        // refuse a local port: connect() EADDRNOTAVAIL, bind(addr, 0)
        // EADDRINUSE or UDP autobind EAGAIN. The rule reads the namespace's
        // total, written at 0 as soon as the witness is attached, so that
        // increase() sees the first failure (the per-destination series are
        // born at their first failure, which increase() cannot see). A
        // target first scraped with failures already counted does not page.
        alert(
          'PortdPortAllocationFailures',
          |||
            sum by (%s) (
              increase(%s[5m])
            ) > 0
          ||| % [keep(['instance', 'job']), sel('portd_port_allocation_failures_total')],
          '0m',
          c.allocationFailureSeverity,
          'Local ports ran out for clients ' + where + ': {{ $value | humanize }} failed calls in 5 m',
          |||
            connect(), bind() or a UDP send failed because no ephemeral port
            was free. `journalctl -x -t portd` (port-allocation-failed) names
            the destination and the process; `portd status` shows the
            witnessed failures per destination and process.
          |||,
        ),
        // Another network namespace (a container's, a pod's) at portd's
        // warning level: its own level, with the same thresholds, hold and
        // hysteresis (portd(8) OTHER NETWORK NAMESPACES). portd writes
        // nothing there: its range is set where the container or pod is
        // defined.
        alert(
          'PortdNamespaceEphemeralPortsWarning',
          |||
            %s and %s == 1
          ||| % [sel('portd_netns_usage_ratio'), sel('portd_netns_alert_level')],
          '1m',
          'warning',
          'Ephemeral ports {{ $value | humanizePercentage }} used in ' + nsName + ' ' + where,
          |||
            The worst destination of network namespace {{ $labels.netns }}
            uses {{ $value | humanizePercentage }} of its ephemeral ports.
            portd does not change another namespace's range: set
            net.ipv4.ip_local_port_range in the pod's securityContext.sysctls
            or with `docker run --sysctl`; `journalctl -x -t portd` says which
            value and where.
          |||,
        ),
        alert(
          'PortdNamespaceEphemeralPortsCritical',
          |||
            %s and %s == 2
          ||| % [sel('portd_netns_usage_ratio'), sel('portd_netns_alert_level')],
          '0m',
          'critical',
          'Ephemeral ports critical ({{ $value | humanizePercentage }}) in ' + nsName + ' ' + where,
          |||
            connect() in network namespace {{ $labels.netns }} is close to
            failing with EADDRNOTAVAIL, and portd does not widen another
            namespace's range. `journalctl -x -t portd` names the namespace,
            how to enter it and what to set.
          |||,
        ),
      ],
    }],
  },
}
