// portd's monitoring mixin: the Prometheus alert rules and the Grafana
// dashboard from one source, in the shape of the node and Kubernetes mixins
// (`_config`, `prometheusAlerts`, `grafanaDashboards`), plain jsonnet with no
// library. packaging/mixin/render.sh writes the shipped files from it.
(import 'config.libsonnet')
+ (import 'alerts.libsonnet')
+ (import 'dashboards.libsonnet')
+ {
  // The files as shipped, byte for byte (render.sh writes these strings).
  rendered:: {
    local m = self,
    local header = |||
      # portd's Prometheus alert rules. Generated from packaging/mixin/ by
      # packaging/mixin/render.sh: change the mixin, not this file.
      #
      # portd writes its metrics in the Prometheus text format after every poll
      # when the policy names a file, for node_exporter's textfile collector
      # (portd.toml [metrics] file); the series carry the labels of
      # node_exporter's scrape (instance, job). The rules select %s.
      # Load with `rule_files:`; `promtool check rules` validates the file.
      # The packages install it as /usr/share/portd/prometheus/portd-alerts.yml
      # and each alert's runbook as /usr/share/doc/portd/runbook.md. To change
      # the selector, a threshold or the runbook's address, render the mixin
      # with your own _config (packaging/mixin/README.md).
    |||,
    'portd-alerts.yml':
      header % [if $._config.portdSelector == '' then 'every series' else '{' + $._config.portdSelector + '}']
      + '\n'
      + std.manifestYamlDoc($.prometheusAlerts, indent_array_in_object=true, quote_keys=false)
      + '\n',
    'portd.json': $.manifestJson($.grafanaDashboards['portd.json']) + '\n',
  },

  // JSON with two-space indentation, keys sorted, and numbers written as
  // the shortest decimal that reads back the same (std.manifestJsonEx
  // writes 0.4 as 0.40000000000000002).
  manifestJson(value, indent='')::
    local inner = indent + '  ';
    local number(n) =
      if std.floor(n) == n && std.abs(n) < 1e15 then '%d' % n
      else
        local short = std.format('%.15g', n);
        if std.parseJson(short) == n then short else std.format('%.17g', n);
    if std.isObject(value) then
      local fields = std.objectFields(value);
      if fields == [] then '{}'
      else '{\n' + std.join(',\n', [
        inner + std.escapeStringJson(k) + ': ' + $.manifestJson(value[k], inner)
        for k in fields
      ]) + '\n' + indent + '}'
    else if std.isArray(value) then
      if value == [] then '[]'
      else '[\n' + std.join(',\n', [inner + $.manifestJson(v, inner) for v in value]) + '\n' + indent + ']'
    else if std.isString(value) then std.escapeStringJson(value)
    else if std.isNumber(value) then number(value)
    else if std.isBoolean(value) then (if value then 'true' else 'false')
    else 'null',
}
