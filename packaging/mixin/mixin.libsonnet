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
      + $.manifestYaml($.prometheusAlerts)
      + '\n',
    'portd.json': $.manifestJson($.grafanaDashboards['portd.json']) + '\n',
  },

  // The manifest functions below replace std.manifestJsonEx and
  // std.manifestYamlDoc, whose string escaping is written in jsonnet and
  // takes Debian's jsonnet (0.18) some 20 s for these files; std.toString
  // of an array is the interpreter's own JSON writer. Keys are sorted.

  // A string as a JSON (and YAML double-quoted) scalar.
  quote(s)::
    local a = std.toString([s]);
    std.substr(a, 1, std.length(a) - 2),

  // The shortest decimal that reads back the same (std.manifestJsonEx
  // writes 0.4 as 0.40000000000000002).
  number(n)::
    if std.floor(n) == n && std.abs(n) < 1e15 then '%d' % n
    else
      local short = std.format('%.15g', n);
      if std.parseJson(short) == n then short else std.format('%.17g', n),

  scalar(v)::
    if std.isString(v) then $.quote(v)
    else if std.isNumber(v) then $.number(v)
    else if std.isBoolean(v) then (if v then 'true' else 'false')
    else 'null',

  // JSON with two-space indentation.
  manifestJson(value, indent='')::
    local inner = indent + '  ';
    if std.isObject(value) then
      local fields = std.objectFields(value);
      if fields == [] then '{}'
      else '{\n' + std.join(',\n', [
        inner + $.quote(k) + ': ' + $.manifestJson(value[k], inner)
        for k in fields
      ]) + '\n' + indent + '}'
    else if std.isArray(value) then
      if value == [] then '[]'
      else '[\n' + std.join(',\n', [inner + $.manifestJson(v, inner) for v in value]) + '\n' + indent + ']'
    else $.scalar(value),

  // YAML, as std.manifestYamlDoc(value, indent_array_in_object=true,
  // quote_keys=false) writes it: a string with line breaks as a literal
  // block (`|`, or `|-` without a final line break), every other string
  // double-quoted. Lines, without the last line break.
  manifestYaml(value, indent='')::
    local inner = indent + '  ';
    local block(s) =
      local clip = std.endsWith(s, '\n');
      local body = if clip then std.substr(s, 0, std.length(s) - 1) else s;
      (if clip then '|' else '|-') + std.join('', [
        '\n' + (if line == '' then '' else inner + line)
        for line in std.split(body, '\n')
      ]);
    local field(k, v) =
      if (std.isObject(v) && std.objectFields(v) != []) || (std.isArray(v) && v != []) then
        indent + k + ':\n' + $.manifestYaml(v, inner)
      else if std.isString(v) && std.length(std.findSubstr('\n', v)) > 0 then
        indent + k + ': ' + block(v)
      else if std.isObject(v) then indent + k + ': {}'
      else if std.isArray(v) then indent + k + ': []'
      else indent + k + ': ' + $.scalar(v);
    local item(v) =
      if std.isObject(v) && std.objectFields(v) != [] then
        local lines = $.manifestYaml(v, inner);
        indent + '- ' + std.substr(lines, std.length(inner), std.length(lines))
      else indent + '- ' + $.scalar(v);
    if std.isObject(value) then
      std.join('\n', [field(k, value[k]) for k in std.objectFields(value)])
    else if std.isArray(value) then
      std.join('\n', [item(v) for v in value])
    else indent + $.scalar(value),
}
