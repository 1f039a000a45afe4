// The Grafana dashboard: packaging/grafana/portd.json once rendered. Plain
// JSON of schema 39 (Grafana 10.4 and 11), no grafonnet: a few local
// constructors below, every query on the chosen Prometheus (${datasource}).
{
  local c = self._config,
  local ds = { type: 'prometheus', uid: '${datasource}' },
  local hasCluster = c.clusterLabel != '',

  local matchers(parts) = std.join(', ', std.filter(function(p) p != '', parts)),
  local clusterMatcher = if hasCluster then '%s=~"$cluster"' % c.clusterLabel else '',
  // The fleet's series (every instance of the chosen job and cluster), and
  // the chosen host's.
  local fleet = matchers([c.portdSelector, clusterMatcher, 'job=~"$job"']),
  local host = matchers([fleet, 'instance=~"$instance"']),
  local by(labels) = std.join(', ', (if hasCluster then [c.clusterLabel] else []) + labels),

  local warning = c.warningPercent / 100,
  local critical = c.criticalPercent / 100,
  local usageThresholds = {
    mode: 'absolute',
    steps: [
      { color: 'green', value: null },
      { color: 'orange', value: warning },
      { color: 'red', value: critical },
    ],
  },

  local target(ref, expr, legend='', table=false) = {
    datasource: ds,
    refId: ref,
    expr: expr,
    legendFormat: legend,
  } + (if table then { instant: true, range: false, format: 'table' } else {}),

  local panel(id, type, title, description, pos, targets, unit, extra={}) = {
    id: id,
    type: type,
    title: title,
    description: description,
    datasource: ds,
    gridPos: { x: pos[0], y: pos[1], w: pos[2], h: pos[3] },
    targets: targets,
    fieldConfig: { defaults: { unit: unit }, overrides: [] },
    options: {},
  } + extra,

  // A time series of usage ratios with the policy's levels drawn as lines.
  local usagePanel(id, title, description, pos, targets) =
    panel(id, 'timeseries', title, description, pos, targets, 'percentunit') + {
      fieldConfig+: { defaults+: {
        min: 0,
        thresholds: usageThresholds,
        custom: { thresholdsStyle: { mode: 'dashed' } },
      } },
    },

  // A second unit for the named series, on the right axis.
  local rightAxis(names, unit) = {
    fieldConfig+: { overrides+: [{
      matcher: { id: 'byRegexp', options: names },
      properties: [
        { id: 'unit', value: unit },
        { id: 'custom.axisPlacement', value: 'right' },
        { id: 'custom.thresholdsStyle', value: { mode: 'off' } },
      ],
    }] },
  },

  local row(id, title, y) = {
    id: id,
    type: 'row',
    title: title,
    collapsed: false,
    gridPos: { x: 0, y: y, w: 24, h: 1 },
    panels: [],
  },

  local variable(name, label, label_query, hide=0, all=false) = {
    name: name,
    label: label,
    type: 'query',
    datasource: ds,
    definition: label_query,
    query: { query: label_query, refId: 'PrometheusVariableQueryEditor-VariableQuery' },
    refresh: 2,
    sort: 1,
    multi: false,
    includeAll: all,
    current: {},
    hide: hide,
    regex: '',
    options: [],
  } + (if all then { allValue: '.*', current: { text: 'All', value: '$__all' } } else {}),

  local pollSeries(m) = 'portd_poll_timestamp_seconds' + (if m == '' then '' else '{%s}' % m),

  local variables =
    [{
      name: 'datasource',
      label: 'Prometheus',
      type: 'datasource',
      query: 'prometheus',
      current: {},
      hide: 0,
      refresh: 1,
      regex: '',
      options: [],
    }]
    // Yields nothing where no series has the label; "All" (.*) then matches
    // every series, so the variable can stay hidden on a single cluster.
    + (if hasCluster then [variable(
         'cluster',
         'Cluster',
         'label_values(%s, %s)' % [pollSeries(c.portdSelector), c.clusterLabel],
         hide=if c.showMultiCluster then 0 else 2,
         all=true,
       )] else [])
    + [
      variable('job', 'Job', 'label_values(%s, job)' % pollSeries(matchers([c.portdSelector, clusterMatcher]))),
      variable('instance', 'Instance', 'label_values(%s, instance)' % pollSeries(fleet)),
    ],

  local fleetPanels = [
    row(1, 'Fleet', 0),
    panel(
      2,
      'bargauge',
      'Hosts by worst usage',
      "Each host's worst destination or pool (portd_headline_usage_ratio), worst first, against the policy's warning (%d %%) and critical (%d %%) levels." % [c.warningPercent, c.criticalPercent],
      [0, 1, 8, 9],
      [target('A', 'sort_desc(max by (%s) (portd_headline_usage_ratio{%s}))' % [by(['instance']), fleet], '{{instance}}', table=true)],
      'percentunit',
      {
        fieldConfig+: { defaults+: { min: 0, max: 1, thresholds: usageThresholds } },
        options: {
          orientation: 'horizontal',
          displayMode: 'gradient',
          reduceOptions: { calcs: ['lastNotNull'], fields: '', values: true },
        },
      },
    ),
    panel(
      3,
      'bargauge',
      'Hosts by time to exhaustion',
      "portd's forecast (portd_time_to_exhaustion_seconds): when the first destination or pool of the host runs out at its present growth, shortest first. Hosts where nothing grows towards exhaustion (+Inf) are left out. PortdExhaustionForecast pages under %d s." % c.exhaustionForecastSeconds,
      [8, 1, 8, 9],
      [target('A', 'sort(min by (%s) (portd_time_to_exhaustion_seconds{%s} < +Inf))' % [by(['instance']), fleet], '{{instance}}', table=true)],
      's',
      {
        fieldConfig+: { defaults+: { thresholds: {
          mode: 'absolute',
          steps: [
            { color: 'red', value: null },
            { color: 'orange', value: c.exhaustionForecastSeconds },
            { color: 'green', value: 3600 },
          ],
        } } },
        options: {
          orientation: 'horizontal',
          displayMode: 'gradient',
          reduceOptions: { calcs: ['lastNotNull'], fields: '', values: true },
        },
      },
    ),
    panel(
      4,
      'table',
      'portd alerts firing',
      "The rules of /usr/share/portd/prometheus/portd-alerts.yml firing now (Prometheus' ALERTS series); each has a section in /usr/share/doc/portd/runbook.md.",
      [16, 1, 8, 9],
      [target('A', 'sum by (%s) (ALERTS{alertstate="firing", alertname=~"Portd.*", %s})' % [by(['alertname', 'severity', 'instance']), fleet], table=true)],
      'short',
    ),
    usagePanel(
      5,
      'Worst usage over time (top 10 hosts)',
      "portd_headline_usage_ratio of the 10 hosts with the highest usage; the dashed lines are the policy's warning and critical levels.",
      [0, 10, 12, 8],
      [target('A', 'topk(10, max by (%s) (portd_headline_usage_ratio{%s}))' % [by(['instance']), fleet], '{{instance}}')],
    ),
    panel(
      6,
      'stat',
      'Hosts',
      'Hosts whose portd writes metrics, how many are at warning or critical, how many have not polled for %d s (PortdMetricsStale), and how many only advise.' % c.metricsStaleSeconds,
      [12, 10, 12, 8],
      [
        target('A', 'count(portd_poll_timestamp_seconds{%s})' % fleet, 'reporting'),
        target('B', 'count(portd_alert_level{%s} >= 1) or vector(0)' % fleet, 'warning or critical'),
        target('C', 'count(time() - portd_poll_timestamp_seconds{%s} > %d) or vector(0)' % [fleet, c.metricsStaleSeconds], 'not polling'),
        target('D', 'count(portd_info{%s, mode!="auto"}) or vector(0)' % fleet, 'advise only'),
      ],
      'short',
    ),
  ],

  local hostPanels = [
    row(7, 'Host $instance', 18),
    usagePanel(
      8,
      'Usage per top destination',
      'The 10 busiest destinations (local address, remote address, remote port): ports in use over the ports connect() can hand out towards each.',
      [0, 19, 12, 9],
      [target('A', 'portd_destination_usage_ratio{%s}' % host, '{{local}} → {{remote}}:{{remote_port}}')],
    ),
    usagePanel(
      9,
      'Headline and pools',
      "The worst destination or pool (headline), each protocol's pool, and portd's confirmed level (0 ok, 1 warning, 2 critical; right axis).",
      [12, 19, 12, 9],
      [
        target('A', 'portd_headline_usage_ratio{%s}' % host, 'headline'),
        target('B', 'portd_pool_usage_ratio{%s}' % host, 'pool {{proto}}'),
        target('C', 'portd_alert_level{%s}' % host, 'level'),
      ],
    ) + rightAxis('level', 'none'),
    panel(
      10,
      'timeseries',
      'Port range',
      'net.ipv4.ip_local_port_range: its lowest and highest port (port numbers). Changes are also dashboard annotations.',
      [0, 28, 6, 8],
      [
        target('A', 'portd_range_low{%s}' % host, 'range low'),
        target('B', 'portd_range_high{%s}' % host, 'range high'),
      ],
      'none',
      { fieldConfig+: { defaults+: { decimals: 0 } } },
    ),
    panel(
      11,
      'timeseries',
      'Ports in the range and capacity',
      'How many ports the range holds, and the capacity towards one destination (the range minus reserved and listening ports).',
      [6, 28, 6, 8],
      [
        target('A', 'portd_range_ports{%s}' % host, 'ports in range'),
        target('B', 'portd_capacity_ports{%s}' % host, 'capacity'),
        target('C', 'portd_headline_used_ports{%s}' % host, 'used (headline)'),
      ],
      'short',
      { fieldConfig+: { defaults+: { min: 0 } } },
    ),
    panel(
      12,
      'timeseries',
      'TIME_WAIT',
      'TCP sockets in TIME_WAIT on the range ports, and those tcp_tw_reuse lets connect() reuse.',
      [12, 28, 6, 8],
      [
        target('A', 'portd_time_wait_in_range_sockets{%s}' % host, 'TIME_WAIT in range'),
        target('B', 'portd_reusable_time_wait_sockets{%s}' % host, 'reusable'),
      ],
      'short',
      { fieldConfig+: { defaults+: { min: 0 } } },
    ),
    panel(
      13,
      'timeseries',
      'Time to exhaustion',
      "portd's forecast of when the first destination or pool runs out (+Inf, not drawn, while nothing grows towards it); the dashed line is PortdExhaustionForecast's threshold.",
      [18, 28, 6, 8],
      [target('A', 'portd_time_to_exhaustion_seconds{%s} < +Inf' % host, 'time to exhaustion')],
      's',
      { fieldConfig+: { defaults+: {
        min: 0,
        thresholds: { mode: 'absolute', steps: [
          { color: 'red', value: null },
          { color: 'green', value: c.exhaustionForecastSeconds },
        ] },
        custom: { thresholdsStyle: { mode: 'dashed' } },
      } } },
    ),
    panel(
      14,
      'timeseries',
      'connect() rate',
      "The namespace's connect() attempts per second.",
      [0, 36, 6, 8],
      [target('A', 'rate(portd_connect_attempts_total{%s}[$__rate_interval])' % host, 'connect() per second')],
      'reqps',
    ),
    panel(
      15,
      'timeseries',
      'Witnessed failures',
      'Port allocations the kernel refused, per second, as the failure witness counts them: connect() with EADDRNOTAVAIL, bind(addr, 0) with EADDRINUSE, UDP autobind with EAGAIN; by process name.',
      [6, 36, 6, 8],
      [
        target('A', 'sum by (comm) (rate(portd_connect_failures_total{%s}[$__rate_interval]))' % host, 'connect {{comm}}'),
        target('B', 'sum by (comm) (rate(portd_bind_failures_total{%s}[$__rate_interval]))' % host, 'bind {{comm}}'),
        target('C', 'sum by (comm) (rate(portd_udp_autobind_failures_total{%s}[$__rate_interval]))' % host, 'udp autobind {{comm}}'),
      ],
      'ops',
    ),
    panel(
      16,
      'timeseries',
      'Census cost',
      'How long the last full census took (left axis), and censuses, skipped censuses and failed censuses per second (right axis).',
      [12, 36, 6, 8],
      [
        target('A', 'portd_census_duration_seconds{%s}' % host, 'census duration'),
        target('B', 'rate(portd_censuses_total{%s}[$__rate_interval])' % host, 'censuses/s'),
        target('C', 'rate(portd_census_skipped_total{%s}[$__rate_interval])' % host, 'skipped/s'),
        target('D', 'sum by (reason) (rate(portd_census_failures_total{%s}[$__rate_interval]))' % host, 'failed/s {{reason}}'),
      ],
      's',
    ) + rightAxis('.*/s.*', 'ops'),
    panel(
      17,
      'stat',
      'What portd may do',
      'Its mode (auto, advise, dry-run) and why it only advises; 1 while it yields to an admin who changed the range; why widening is held back; range changes in the time range; 1 while the failure witness counts failed port allocations.',
      [18, 36, 6, 8],
      [
        target('A', 'portd_info{%s}' % host, '{{mode}} {{advise_reason}}'),
        target('B', 'portd_yielded{%s}' % host, 'yielded'),
        target('C', 'portd_widening_blocked{%s} == 1' % host, 'blocked: {{reason}}'),
        target('D', 'increase(portd_range_changes_total{%s}[$__range])' % host, 'range changes'),
        target('E', 'portd_witness_active{%s}' % host, 'failure witness on'),
      ],
      'none',
    ),
  ],

  // The namespaces' families carry the same labels (netns, and where portd
  // knows them container, pod, pod_namespace): the table merges the three
  // instant queries into one row per namespace. `max without ()` drops the
  // metric name, which would otherwise keep the three frames' rows apart.
  local nsColumns = ['netns', 'pod_namespace', 'pod', 'container'],
  local netnsPanels = [
    row(18, 'Network namespaces on $instance', 44),
    usagePanel(
      19,
      'Namespaces by usage (top 20)',
      'The worst destination or pool of each other network namespace (containers, pods), named by namespace inode, container and pod.',
      [0, 45, 12, 9],
      [target('A', 'topk(20, portd_netns_usage_ratio{%s})' % host, '{{netns}} {{container}} {{pod_namespace}} {{pod}}')],
    ),
    panel(
      20,
      'table',
      'Namespaces',
      "Each watched namespace in one row: its worst destination's usage and ports, and its confirmed level (0 ok, 1 warning, 2 critical), worst first.",
      [12, 45, 8, 9],
      [
        target('A', 'max without () (portd_netns_usage_ratio{%s})' % host, table=true),
        target('B', 'max without () (portd_netns_used_ports{%s})' % host, table=true),
        target('C', 'max without () (portd_netns_alert_level{%s})' % host, table=true),
      ],
      'short',
      {
        transformations: [
          { id: 'merge', options: {} },
          {
            id: 'organize',
            options: {
              excludeByName: { Time: true, job: true, instance: true } + (if hasCluster then { [c.clusterLabel]: true } else {}),
              indexByName: { [nsColumns[i]]: i for i in std.range(0, std.length(nsColumns) - 1) } + {
                'Value #A': 4,
                'Value #B': 5,
                'Value #C': 6,
              },
              renameByName: {
                netns: 'Namespace',
                pod_namespace: 'Pod namespace',
                pod: 'Pod',
                container: 'Container',
                'Value #A': 'Usage',
                'Value #B': 'Ports used',
                'Value #C': 'Level',
              },
            },
          },
        ],
        options: { sortBy: [{ displayName: 'Usage', desc: true }] },
        fieldConfig+: { overrides: [
          {
            matcher: { id: 'byName', options: 'Usage' },
            properties: [
              { id: 'unit', value: 'percentunit' },
              { id: 'thresholds', value: usageThresholds },
              { id: 'custom.cellOptions', value: { type: 'color-background' } },
            ],
          },
          {
            matcher: { id: 'byName', options: 'Level' },
            properties: [
              { id: 'unit', value: 'none' },
              { id: 'mappings', value: [{ type: 'value', options: {
                '0': { text: 'ok', color: 'green', index: 0 },
                '1': { text: 'warning', color: 'orange', index: 1 },
                '2': { text: 'critical', color: 'red', index: 2 },
              } }] },
              { id: 'custom.cellOptions', value: { type: 'color-text' } },
            ],
          },
        ] },
      },
    ),
    panel(
      21,
      'stat',
      'Namespaces watched',
      'Other network namespaces portd watches, and their censuses per second.',
      [20, 45, 4, 9],
      [
        target('A', 'portd_netns_watched{%s}' % host, 'watched'),
        target('B', 'rate(portd_netns_censuses_total{%s}[$__rate_interval])' % host, 'censuses/s'),
      ],
      'short',
      { fieldConfig+: { overrides: [{
        matcher: { id: 'byName', options: 'censuses/s' },
        properties: [{ id: 'unit', value: 'ops' }],
      }] } },
    ),
  ],

  grafanaDashboards+:: {
    'portd.json': {
      title: c.dashboardTitle,
      uid: c.dashboardUid,
      description: 'Ephemeral-port usage of a fleet running portd (node_exporter textfile metrics). Alert rules: /usr/share/portd/prometheus/portd-alerts.yml; runbook: /usr/share/doc/portd/runbook.md. Generated from packaging/mixin/.',
      tags: c.dashboardTags,
      schemaVersion: 39,
      version: 1,
      editable: true,
      graphTooltip: 1,
      refresh: c.dashboardRefresh,
      time: { from: 'now-6h', to: 'now' },
      timepicker: {},
      timezone: '',
      links: [],
      __inputs: [],
      annotations: { list: [
        {
          name: 'Range changes',
          enable: true,
          iconColor: 'blue',
          datasource: ds,
          expr: 'changes(portd_range_low{%s}[$__interval]) > 0 or changes(portd_range_high{%s}[$__interval]) > 0' % [host, host],
          step: '$__interval',
          titleFormat: 'port range changed',
          textFormat: '{{instance}}',
          useValueForTime: false,
        },
        {
          name: 'Capacity changes',
          enable: true,
          iconColor: 'orange',
          datasource: ds,
          expr: 'changes(portd_capacity_ports{%s}[$__interval]) > 0' % host,
          step: '$__interval',
          titleFormat: 'capacity changed',
          textFormat: '{{instance}}',
          useValueForTime: false,
        },
      ] },
      templating: { list: variables },
      panels: fleetPanels + hostPanels + netnsPanels,
    },
  },
}
