//! The Prometheus text format (version 0.0.4) of the metrics file: one
//! escaper for label values, one writer for a family's `# HELP`, `# TYPE`
//! and samples.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// A label value, escaped for the text format: backslash, double quote
/// and line feed are the three characters it escapes.
pub fn escape(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Gauge,
    Counter,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Gauge => "gauge",
            MetricType::Counter => "counter",
        }
    }
}

/// A sample's value: an integer as it is, a real as Rust prints it
/// (`+Inf` for infinity, as the text format spells it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Real(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Real(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Real(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Value::Real(v) => write!(f, "{v}"),
        }
    }
}

/// One sample: its labels in order (values unescaped) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

impl Sample {
    pub(super) fn new(value: Value) -> Sample {
        Sample {
            labels: Vec::new(),
            value,
        }
    }

    pub(super) fn labelled(labels: Vec<(&'static str, String)>, value: Value) -> Sample {
        Sample { labels, value }
    }

    /// `{a="x",b="y"}`, or nothing without labels.
    pub(super) fn label_text(&self) -> String {
        if self.labels.is_empty() {
            return String::new();
        }
        let pairs: Vec<String> = self
            .labels
            .iter()
            .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
            .collect();
        format!("{{{}}}", pairs.join(","))
    }
}

/// One family: its name, type, help and samples.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricFamily {
    pub name: &'static str,
    pub kind: MetricType,
    pub help: Cow<'static, str>,
    pub samples: Vec<Sample>,
}

impl MetricFamily {
    pub(super) fn gauge(
        name: &'static str,
        help: &'static str,
        samples: Vec<Sample>,
    ) -> MetricFamily {
        MetricFamily {
            name,
            kind: MetricType::Gauge,
            help: Cow::Borrowed(help),
            samples,
        }
    }

    pub(super) fn counter(
        name: &'static str,
        help: &'static str,
        samples: Vec<Sample>,
    ) -> MetricFamily {
        MetricFamily {
            kind: MetricType::Counter,
            ..MetricFamily::gauge(name, help, samples)
        }
    }

    /// One unlabelled gauge.
    pub(super) fn one_gauge(name: &'static str, help: &'static str, value: f64) -> MetricFamily {
        MetricFamily::gauge(name, help, vec![Sample::new(Value::Real(value))])
    }

    /// One unlabelled counter.
    pub(super) fn one_counter(name: &'static str, help: &'static str, value: u64) -> MetricFamily {
        MetricFamily::counter(name, help, vec![Sample::new(Value::Real(value as f64))])
    }

    /// `# HELP`, `# TYPE`, then `name{labels} value` a line.
    fn write(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} {}", self.kind.as_str());
        for s in &self.samples {
            let _ = writeln!(out, "{name}{} {}", s.label_text(), s.value);
        }
    }
}

/// The text of `families`, in their order.
pub fn text(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for family in families {
        family.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escaper_escapes_backslash_double_quote_and_line_feed_only() {
        assert_eq!(escape("shop/checkout:8080"), "shop/checkout:8080");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape("two\nlines"), "two\\nlines");
        assert_eq!(
            escape("\\n"),
            "\\\\n",
            "a backslash then n stays two characters"
        );
        assert_eq!(escape("tab\tand 'quote' é"), "tab\tand 'quote' é");
    }

    #[test]
    fn a_family_is_help_type_then_one_line_per_sample() {
        let gauge = MetricFamily::one_gauge("portd_g", "A gauge.", 0.25);
        let counter = MetricFamily::counter(
            "portd_c_total",
            "A counter.",
            vec![
                Sample::labelled(vec![("reason", "a\"b".into())], Value::Int(3)),
                Sample::labelled(
                    vec![("proto", "udp".into()), ("comm", String::new())],
                    Value::Int(u64::MAX),
                ),
            ],
        );
        let empty = MetricFamily::gauge("portd_none", "No samples.", Vec::new());
        let inf = MetricFamily::one_gauge("portd_t_seconds", "Until.", f64::INFINITY);
        assert_eq!(
            text(&[gauge, counter, empty, inf]),
            "# HELP portd_g A gauge.\n# TYPE portd_g gauge\nportd_g 0.25\n\
             # HELP portd_c_total A counter.\n# TYPE portd_c_total counter\n\
             portd_c_total{reason=\"a\\\"b\"} 3\n\
             portd_c_total{proto=\"udp\",comm=\"\"} 18446744073709551615\n\
             # HELP portd_none No samples.\n# TYPE portd_none gauge\n\
             # HELP portd_t_seconds Until.\n# TYPE portd_t_seconds gauge\nportd_t_seconds +Inf\n"
        );
    }

    #[test]
    fn a_counter_of_one_sample_is_printed_as_before_as_a_real() {
        let c = MetricFamily::one_counter("portd_n_total", "N.", 42);
        assert_eq!(
            c.samples,
            [Sample {
                labels: Vec::new(),
                value: Value::Real(42.0)
            }]
        );
        assert!(text(&[c]).ends_with("portd_n_total 42\n"));
    }
}
