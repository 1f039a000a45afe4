// What a site changes: override any field with
//   (import 'mixin.libsonnet') + { _config+:: { portdSelector: 'job="node-exporter"' } }
// The defaults render the files shipped in packaging/prometheus/ and
// packaging/grafana/ (packaging/mixin/render.sh).
{
  _config+:: {
    // Inserted between {} in every query of the rules and the dashboard:
    // the series of the node_exporter scrape that reads portd's textfile
    // (portd.toml [metrics] file). `job="node"` is the job name of Debian's
    // prometheus configuration and of the node mixin; empty selects all.
    portdSelector: 'job="node"',

    // The label that tells clusters apart where one Prometheus (or a global
    // view over several) holds more than one. Aggregations keep it, so an
    // alert names its cluster; where no series has it, nothing changes.
    clusterLabel: 'cluster',
    // Show the dashboard's cluster variable. Hidden, it still selects all
    // clusters ("All", a regex that also matches series without the label).
    showMultiCluster: false,

    // The policy's levels (config/portd.toml [thresholds] warning and
    // critical, in percent): the dashboard's threshold lines. The rules do
    // not repeat them: they follow portd_alert_level, which applies the
    // policy with its hold and hysteresis. Change them with the policy.
    warningPercent: 40,
    criticalPercent: 50,

    // Thresholds of the rules, measured in docs/ramps.md ("The rules' for:
    // and thresholds"): keep them unless your paging policy says otherwise.
    exhaustionForecastSeconds: 300,  // PortdExhaustionForecast
    metricsStaleSeconds: 300,  // PortdMetricsStale: 150 polls at the 2 s default
    censusStaleSeconds: 900,  // PortdCensusStale: three times max_staleness (5m)
    rangeChangesIn6h: 3,  // PortdRangeChangingOften
    // PortdPortAllocationFailures pages at the first witnessed failure: a
    // client's connect() or bind() failed for want of a port. Where a lone
    // failure should not wake anyone, make it 'warning'.
    allocationFailureSeverity: 'critical',

    // Each alert's runbook_url is this, '#' and the alert's name in lower
    // case (the heading's anchor in docs/runbook.md). The packages install
    // the runbook there, beside the rules in /usr/share/portd/prometheus/
    // that a Prometheus loads from the same installation. Point it at your
    // own copy (a wiki, an internal web server) for links that open from
    // an Alertmanager notification on another machine.
    runbookURLBase: 'file:///usr/share/doc/portd/runbook.md',

    dashboardUid: 'portd-ephemeral-ports',
    dashboardTitle: 'portd: ephemeral ports',
    dashboardTags: ['portd', 'network'],
    dashboardRefresh: '1m',
  },
}
