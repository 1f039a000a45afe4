//! Diagnostics of a policy file: each problem one `PATH:LINE:COLUMN` line,
//! all of a file's problems at once.
//!
//! Serde stops at the first error, so [`deserialize_all`] deserializes the
//! parsed document repeatedly: each error is reported, the key it points at
//! is dropped, and the rest is tried again. Unknown keys, the one error a
//! file can hold without bound, are all dropped in one pass first
//! ([`drop_unknown_keys`]).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::raw::{
    RawAlerts, RawMetrics, RawPersist, RawPolicy, RawPoll, RawThresholds, RawWiden, SectionName,
};
use super::values::bare;

/// Where a diagnostic points in the file, 1-based; the column counts characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// One problem with a policy file; displays as exactly one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// `None` for problems with the file as a whole (unreadable, unsafe owner or mode).
    pub position: Option<Position>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => {
                write!(
                    f,
                    "{}:{line}:{column}: {}",
                    self.path.display(),
                    self.message
                )
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// Why a policy file was refused: one diagnostic per problem, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The first [`DIAGNOSTICS_KEPT`] problems.
    pub diagnostics: Vec<Diagnostic>,
    /// How many more problems the file has after those.
    pub omitted: usize,
}

/// Problems kept and shown per file: a file with thousands of errors is
/// not a policy with a few typos, and an endless list helps nobody.
pub const DIAGNOSTICS_KEPT: usize = 20;

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        if self.omitted > 0 {
            let path = self.diagnostics.first().map(|d| d.path.display());
            write!(f, "\nand {} more problems", self.omitted)?;
            if let Some(path) = path {
                write!(f, " in {path}")?;
            }
            write!(f, " (fix the ones above and check again)")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

impl PolicyError {
    /// A problem with the file as a whole, without a place in it.
    pub fn whole_file(path: &Path, message: String) -> Self {
        PolicyError {
            diagnostics: vec![Diagnostic {
                path: path.to_path_buf(),
                position: None,
                message: one_line(&message),
            }],
            omitted: 0,
        }
    }
}

/// Collects the diagnostics of one file.
pub(super) struct DiagnosticReport<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    /// (byte offset, message), sorted into file order at the end.
    pub(super) found: Vec<(usize, String)>,
    /// Dotted keys dropped because their value was invalid: relations that
    /// involve them are not checked, or they would be reported against a
    /// default the file never asked for.
    pub(super) dropped: Vec<String>,
}

/// Longest message kept whole; a longer one (a value echoed by a parser
/// message) is cut, so that one diagnostic stays one readable line.
const MESSAGE_MAX: usize = 1000;

impl DiagnosticReport<'_> {
    pub(super) fn error(&mut self, span: Option<Range<usize>>, message: String) {
        let offset = span.map_or(0, |s| s.start);
        let mut message = one_line(&message);
        if message.len() > MESSAGE_MAX {
            let cut = floor_char_boundary(&message, MESSAGE_MAX);
            message.truncate(cut);
            message.push('…');
        }
        self.found.push((offset, message));
    }

    pub(super) fn is_dropped(&self, key: &str) -> bool {
        self.dropped.iter().any(|k| k == key)
    }

    pub(super) fn into_error(mut self) -> PolicyError {
        // Stable: problems at one offset stay in the order they were found.
        self.found.sort_by_key(|(offset, _)| *offset);
        let omitted = self.found.len().saturating_sub(DIAGNOSTICS_KEPT);
        self.found.truncate(DIAGNOSTICS_KEPT);
        let mut cursor = Cursor::default();
        let diagnostics = self
            .found
            .into_iter()
            .map(|(offset, message)| Diagnostic {
                path: self.path.to_path_buf(),
                position: Some(cursor.advance(self.text, offset)),
                message,
            })
            .collect();
        PolicyError {
            diagnostics,
            omitted,
        }
    }
}

/// Walks the text forward once, so that the positions of all diagnostics
/// (offsets in ascending order) cost one pass, not one pass each.
#[derive(Default)]
struct Cursor {
    offset: usize,
    line: usize,
    /// Characters since the last newline.
    column: usize,
}

impl Cursor {
    fn advance(&mut self, text: &str, offset: usize) -> Position {
        let offset = floor_char_boundary(text, offset).max(self.offset);
        for c in text[self.offset..offset].chars() {
            if c == '\n' {
                self.line += 1;
                self.column = 0;
            } else {
                self.column += 1;
            }
        }
        self.offset = offset;
        Position {
            line: self.line + 1,
            column: self.column + 1,
        }
    }
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn position(text: &str, offset: usize) -> Position {
    Cursor::default().advance(text, offset)
}

/// A diagnostic must stay one line whatever the file contains.
fn one_line(message: &str) -> String {
    message.replace(['\n', '\r'], " ")
}

/// Reports every key the schema does not have and removes it, in one pass
/// over the document: serde would stop at the first, and deserializing again
/// after each one is quadratic in their number.
pub(super) fn drop_unknown_keys(document: &mut DeTable<'_>, report: &mut DiagnosticReport<'_>) {
    let top = fields_of::<RawPolicy>();
    report_unknown(document, &[], top, report);
    keep_only(document, top);
    for (key, value) in document.iter_mut() {
        if let DeValue::Table(inner) = value.get_mut()
            && let Some(fields) = section_fields(key.get_ref())
        {
            let section = [key.get_ref().to_string()];
            report_unknown(inner, &section, fields, report);
            keep_only(inner, fields);
        }
    }
}

/// Rebuilt rather than removed from one by one: removing from the
/// order-preserving map shifts every later entry.
fn keep_only(table: &mut DeTable<'_>, fields: &[&str]) {
    if table
        .iter()
        .all(|(key, _)| fields.contains(&&**key.get_ref()))
    {
        return;
    }
    *table = std::mem::take(table)
        .into_iter()
        .filter(|(key, _)| fields.contains(&&**key.get_ref()))
        .collect();
}

fn report_unknown(
    table: &DeTable<'_>,
    outer: &[String],
    fields: &'static [&'static str],
    report: &mut DiagnosticReport<'_>,
) {
    for (key, _) in table.iter() {
        let name: &str = key.get_ref();
        if fields.contains(&name) {
            continue;
        }
        // serde's own wording, so these read like every other unknown key.
        let message = <de::value::Error as de::Error>::unknown_field(&bare(name), fields);
        let mut path = outer.to_vec();
        path.push(name.to_string());
        report.error(
            Some(key.span()),
            describe(&message.to_string(), Some(&path)),
        );
    }
}

/// The keys of each section, as the raw structs below accept them.
fn section_fields(name: &str) -> Option<&'static [&'static str]> {
    [
        (RawPoll::NAME, fields_of::<RawPoll>()),
        (RawThresholds::NAME, fields_of::<RawThresholds>()),
        (RawWiden::NAME, fields_of::<RawWiden>()),
        (RawPersist::NAME, fields_of::<RawPersist>()),
        (RawAlerts::NAME, fields_of::<RawAlerts>()),
        (RawMetrics::NAME, fields_of::<RawMetrics>()),
    ]
    .into_iter()
    .find_map(|(section, fields)| (section == name).then_some(fields))
}

/// The field names a derived `Deserialize` struct accepts: derive passes
/// them to `deserialize_struct`, where this deserializer notes them. One
/// list, so the check of unknown keys cannot drift from the structs.
fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct FieldNames<'a>(&'a std::cell::Cell<&'static [&'static str]>);

    impl<'de> Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("field names noted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }

    let fields = std::cell::Cell::new(&[][..]);
    let _ = T::deserialize(FieldNames(&fields));
    fields.get()
}

/// Deserializes the whole document, reporting every error: after each error
/// the key it points at is dropped and the rest is deserialized again.
pub(super) fn deserialize_all(
    document: &mut Spanned<DeTable<'_>>,
    report: &mut DiagnosticReport<'_>,
) -> RawPolicy {
    loop {
        let error = match RawPolicy::deserialize(toml::de::Deserializer::from(document.clone())) {
            Ok(raw) => return raw,
            Err(error) => error,
        };
        let span = error.span();
        let key = span
            .as_ref()
            .and_then(|span| locate(document.get_ref(), span));
        report.error(span, describe(error.message(), key.as_deref()));
        match key {
            Some(key) if remove(document.get_mut(), &key) => report.dropped.push(key.join(".")),
            // Cannot tell which key is wrong: report what we have.
            _ => return RawPolicy::default(),
        }
    }
}

/// The path of keys to the innermost entry whose key or value holds `span`.
fn locate(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    let holds = |outer: Range<usize>| {
        outer.start <= span.start && span.start < outer.end.max(outer.start + 1)
    };
    for (key, value) in table.iter() {
        if let DeValue::Table(inner) = value.get_ref()
            && let Some(mut path) = locate(inner, span)
        {
            path.insert(0, key.get_ref().to_string());
            return Some(path);
        }
        if holds(key.span()) || holds(value.span()) {
            return Some(vec![key.get_ref().to_string()]);
        }
    }
    None
}

fn remove(table: &mut DeTable<'_>, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last.as_str()).is_some(),
        [first, rest @ ..] => match table.get_mut(first.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(inner)) => remove(inner, rest),
            _ => false,
        },
    }
}

/// Puts the key into serde's message, which never names it.
fn describe(message: &str, key: Option<&[String]>) -> String {
    let Some(key) = key else {
        return message.to_string();
    };
    // serde: "unknown field `x`, expected one of `a`, `b`" (deny_unknown_fields).
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((name, allowed)) = rest.split_once("`, ")
    {
        let table = match &key[..key.len() - 1] {
            [] => "at the top level".to_string(),
            outer => format!("in [{}]", outer.join(".")),
        };
        return format!("unknown key `{name}` {table}, {allowed}");
    }
    format!("{}: {message}", key.join("."))
}
