//! Reading `/etc/portd.toml`: TOML text → raw serde structs → validated [`Policy`].
//!
//! Every problem becomes one line `PATH:LINE:COLUMN: what is wrong and what is
//! allowed`, and all independent problems of a file are reported together.
//! Serde stops at the first error, so [`parse`] deserializes the parsed document
//! repeatedly: each error is reported, the key it points at is dropped, and the
//! rest is tried again. Values are checked one by one as they are deserialized
//! (each leaf type below); the relations between keys are checked afterwards
//! with the spans kept by [`Spanned`], so those errors point at the key to fix.

use std::fmt;
use std::fs::{File, Metadata};
use std::io;
use std::marker::PhantomData;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Floor, Mode, Policy};
use crate::fsutil;
use crate::kernel::PortRange;
use crate::usage::Ratio;

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

/// Reads, checks (owner and mode, see [`check_file_safety`]) and parses the
/// policy file. A missing file is an error here; see [`load_or_default`].
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let file = fsutil::open_regular(path).map_err(|e| cannot_read(path, &e))?;
    read_open_file(path, file)
}

/// Like [`load`], but a file that does not exist gives the built-in defaults.
/// The flag tells whether the file was found.
pub fn load_or_default(path: &Path) -> Result<(Policy, bool), PolicyError> {
    match fsutil::open_regular(path) {
        Ok(file) => read_open_file(path, file).map(|policy| (policy, true)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Policy::default(), false)),
        Err(e) => Err(cannot_read(path, &e)),
    }
}

/// The longest policy file portd reads; real ones are a few KiB.
const POLICY_MAX_BYTES: u64 = 1024 * 1024;

fn read_open_file(path: &Path, file: File) -> Result<Policy, PolicyError> {
    // fstat the open file, so the file checked is the file read.
    let metadata = file.metadata().map_err(|e| cannot_read(path, &e))?;
    check_file_safety(path, &metadata, rustix::process::geteuid().as_raw())?;
    let bytes = fsutil::read_to_limit(file, POLICY_MAX_BYTES).map_err(|e| cannot_read(path, &e))?;
    parse_bytes(path, bytes)
}

/// Parses the bytes of a policy file: UTF-8 text, then [`parse`].
pub fn parse_bytes(path: &Path, bytes: Vec<u8>) -> Result<Policy, PolicyError> {
    match String::from_utf8(bytes) {
        Ok(text) => parse(path, &text),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let prefix = String::from_utf8_lossy(&bytes[..valid]);
            Err(PolicyError {
                diagnostics: vec![Diagnostic {
                    path: path.to_path_buf(),
                    position: Some(position(&prefix, valid)),
                    message: "the file is not valid UTF-8; TOML files must be UTF-8 text"
                        .to_string(),
                }],
                omitted: 0,
            })
        }
    }
}

fn cannot_read(path: &Path, error: &io::Error) -> PolicyError {
    PolicyError::whole_file(path, format!("cannot read the policy file: {error}"))
}

/// Refuses a policy file that someone other than root or the invoking user
/// could have written, as sshd's `StrictModes` does: whoever can write the
/// policy decides what portd writes into the kernel.
pub fn check_file_safety(
    path: &Path,
    metadata: &Metadata,
    invoking_uid: u32,
) -> Result<(), PolicyError> {
    let shown = shell_quote(path);
    let mut diagnostics = Vec::new();
    let mut refuse = |message: String| {
        diagnostics.push(Diagnostic {
            path: path.to_path_buf(),
            position: None,
            message,
        })
    };
    if !metadata.is_file() {
        refuse("refusing the policy file: it is not a regular file".to_string());
    }
    let owner = metadata.uid();
    if owner != 0 && owner != invoking_uid {
        refuse(format!(
            "refusing the policy file: it is owned by uid {owner}, which is neither root nor \
             the user running portd (uid {invoking_uid}); fix: chown root: {shown}"
        ));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        refuse(format!(
            "refusing the policy file: mode {mode:04o} lets group or others write it; \
             fix: chmod go-w {shown}"
        ));
    }
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(PolicyError {
            diagnostics,
            omitted: 0,
        })
    }
}

/// Quotes a path for a shell command line when it needs it.
fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Parses and validates policy text. `path` only names the file in messages.
///
/// Linear in the size of the file, however many errors it has: unknown keys
/// (the one error a file can hold without bound) are all found in one pass
/// before serde sees the document, so the deserialize-and-drop loop below
/// runs at most once per known key; positions are computed in one pass
/// over the text at the end.
pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    let mut report = Report {
        path,
        text,
        found: Vec::new(),
        dropped: Vec::new(),
    };
    let mut document = match DeTable::parse(text) {
        Ok(document) => document,
        Err(e) => {
            report.error(e.span(), format!("TOML syntax error: {}", e.message()));
            return Err(report.into_error());
        }
    };
    drop_unknown_keys(document.get_mut(), &mut report);
    let raw = deserialize_all(&mut document, &mut report);
    let policy = validate(raw, &mut report);
    if report.found.is_empty() {
        Ok(policy)
    } else {
        Err(report.into_error())
    }
}

/// Collects the diagnostics of one file.
struct Report<'a> {
    path: &'a Path,
    text: &'a str,
    /// (byte offset, message), sorted into file order at the end.
    found: Vec<(usize, String)>,
    /// Dotted keys dropped because their value was invalid: relations that
    /// involve them are not checked, or they would be reported against a
    /// default the file never asked for.
    dropped: Vec<String>,
}

/// Longest message kept whole; a longer one (a value echoed by a parser
/// message) is cut, so that one diagnostic stays one readable line.
const MESSAGE_MAX: usize = 1000;

impl Report<'_> {
    fn error(&mut self, span: Option<Range<usize>>, message: String) {
        let offset = span.map_or(0, |s| s.start);
        let mut message = one_line(&message);
        if message.len() > MESSAGE_MAX {
            let cut = floor_char_boundary(&message, MESSAGE_MAX);
            message.truncate(cut);
            message.push('…');
        }
        self.found.push((offset, message));
    }

    fn is_dropped(&self, key: &str) -> bool {
        self.dropped.iter().any(|k| k == key)
    }

    fn into_error(mut self) -> PolicyError {
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
fn position(text: &str, offset: usize) -> Position {
    Cursor::default().advance(text, offset)
}

/// A value as diagnostics show it: quoted, and cut after [`SHOWN_CHARS`]
/// characters with its size, so a 5 MB value does not become a 5 MB line.
fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
    }
}

const SHOWN_CHARS: usize = 60;

/// A diagnostic must stay one line whatever the file contains.
fn one_line(message: &str) -> String {
    message.replace(['\n', '\r'], " ")
}

/// Reports every key the schema does not have and removes it, in one pass
/// over the document: serde would stop at the first, and deserializing again
/// after each one is quadratic in their number.
fn drop_unknown_keys(document: &mut DeTable<'_>, report: &mut Report<'_>) {
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
    report: &mut Report<'_>,
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

/// A key name as diagnostics show it inside backticks: cut like [`shown`].
fn bare(name: &str) -> String {
    match name.char_indices().nth(SHOWN_CHARS) {
        None => name.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &name[..cut], name.len()),
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
fn deserialize_all(document: &mut Spanned<DeTable<'_>>, report: &mut Report<'_>) -> RawPolicy {
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

// ---------------------------------------------------------------------------
// The file as written: every section and key optional, unknown keys refused.

type Opt<T> = Option<Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPolicy {
    poll: Section<RawPoll>,
    thresholds: Section<RawThresholds>,
    widen: Section<RawWiden>,
    persist: Section<RawPersist>,
    alerts: Section<RawAlerts>,
    metrics: Section<RawMetrics>,
}

/// A section of the file. Only a table will do: the derived struct visitor
/// would also take an array (`[[widen]]`), element by element as fields.
#[derive(Debug, Default)]
struct Section<T>(T);

trait SectionName {
    const NAME: &'static str;
}

macro_rules! section_names {
    ($($ty:ty => $name:literal),*) => {$(
        impl SectionName for $ty {
            const NAME: &'static str = $name;
        }
    )*};
}

section_names!(
    RawPoll => "poll",
    RawThresholds => "thresholds",
    RawWiden => "widen",
    RawPersist => "persist",
    RawAlerts => "alerts",
    RawMetrics => "metrics"
);

impl<'de, T: Deserialize<'de> + SectionName> Deserialize<'de> for Section<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TableOnly<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de> + SectionName> Visitor<'de> for TableOnly<T> {
            type Value = Section<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a table, written once as [{}]", T::NAME)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Section<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Section)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Section<T>, A::Error> {
                Err(de::Error::invalid_type(Unexpected::Other("array"), &self))
            }
        }

        d.deserialize_map(TableOnly(PhantomData))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPoll {
    interval: Opt<HumanDuration>,
    max_staleness: Opt<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawThresholds {
    warning: Opt<Percent>,
    critical: Opt<Percent>,
    clear: Opt<Percent>,
    hold: Opt<HumanDuration>,
    tcp_pool: Opt<Flag>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawWiden {
    mode: Opt<ModeValue>,
    floor: Opt<FloorValue>,
    ceiling: Opt<PortNumber>,
    target: Opt<Percent>,
    cooldown: Opt<HumanDuration>,
    max_changes_per_hour: Opt<ChangesPerHour>,
    protected: Opt<ProtectedList>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPersist {
    enabled: Opt<Flag>,
    file: Opt<DropinName>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAlerts {
    reminder: Opt<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawMetrics {
    file: Opt<MetricsPath>,
}

// ---------------------------------------------------------------------------
// Leaf values: each checks its own value, with a message that says what is allowed.

/// A TOML scalar, as a leaf sees it.
enum Scalar<'a> {
    Int(i128),
    Float(f64),
    Str(&'a str),
    Bool(bool),
}

/// A value type of the file. `from_scalar` returns `None` for a TOML type it
/// does not take (serde then says "invalid type: …, expected EXPECTING") and
/// `Some(Err(message))` for a value of the right type that is not allowed.
trait Leaf: Sized {
    const EXPECTING: &'static str;
    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>>;
}

struct LeafVisitor<T>(PhantomData<T>);

impl<T: Leaf> LeafVisitor<T> {
    fn take<E: de::Error>(&self, value: Scalar<'_>, unexpected: Unexpected<'_>) -> Result<T, E> {
        match T::from_scalar(value) {
            None => Err(E::invalid_type(unexpected, self)),
            Some(result) => result.map_err(E::custom),
        }
    }
}

impl<'de, T: Leaf> Visitor<'de> for LeafVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.take(Scalar::Int(v.into()), Unexpected::Signed(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.take(Scalar::Int(v.into()), Unexpected::Unsigned(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<T, E> {
        let shown = format!("integer `{v}`");
        self.take(Scalar::Int(v), Unexpected::Other(&shown))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<T, E> {
        match i128::try_from(v) {
            Ok(v) => self.visit_i128(v),
            Err(_) => Err(E::custom(format!("{v} is far too large"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.take(Scalar::Float(v), Unexpected::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        let quoted = format!("string {}", shown(v));
        self.take(Scalar::Str(v), Unexpected::Other(&quoted))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.take(Scalar::Bool(v), Unexpected::Bool(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        Err(de::Error::invalid_type(Unexpected::Other("array"), &self))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        Err(de::Error::invalid_type(Unexpected::Other("table"), &self))
    }
}

macro_rules! deserialize_as_leaf {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(LeafVisitor::<$ty>(PhantomData))
            }
        }
    )*};
}

deserialize_as_leaf!(
    HumanDuration,
    Percent,
    Flag,
    ModeValue,
    FloorValue,
    PortNumber,
    ChangesPerHour,
    ProtectedEntry,
    DropinName,
    MetricsPath
);

/// Longest duration accepted anywhere: a year. Longer values are typos, and
/// would overflow timer arithmetic.
const DURATION_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug)]
struct HumanDuration(Duration);

impl Leaf for HumanDuration {
    const EXPECTING: &'static str = r#"a duration such as "30s", "5m" or "1h 30m""#;

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        let Scalar::Str(text) = value else {
            return None;
        };
        Some(match humantime::parse_duration(text.trim()) {
            Ok(d) if d > DURATION_MAX => Err(format!(
                "duration {} is longer than a year; use at most \"365d\"",
                shown(text)
            )),
            Ok(d) => Ok(HumanDuration(d)),
            Err(e) => Err(format!(
                "invalid duration {} ({}); write it like \"30s\", \"5m\" or \"1h 30m\"",
                shown(text),
                bare(&e.to_string())
            )),
        })
    }
}

/// A share of capacity written in percent: above 0, at most 100.
#[derive(Debug)]
struct Percent(f64);

impl Leaf for Percent {
    const EXPECTING: &'static str = "a percentage above 0 and at most 100, such as 40 or 12.5";

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        let percent = match value {
            Scalar::Int(i) => i as f64,
            Scalar::Float(f) => f,
            _ => return None,
        };
        Some(if percent > 0.0 && percent <= 100.0 {
            Ok(Percent(percent))
        } else {
            Err(format!(
                "{percent} is not a usable percentage; use a number above 0 and at most 100"
            ))
        })
    }
}

impl Percent {
    fn ratio(&self) -> Ratio {
        Ratio(self.0 / 100.0)
    }
}

#[derive(Debug)]
struct Flag(bool);

impl Leaf for Flag {
    const EXPECTING: &'static str = "true or false";

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        match value {
            Scalar::Bool(b) => Some(Ok(Flag(b))),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct ModeValue(Mode);

impl Leaf for ModeValue {
    const EXPECTING: &'static str = r#""auto" or "advise""#;

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        let Scalar::Str(text) = value else {
            return None;
        };
        Some(match text {
            "auto" => Ok(ModeValue(Mode::Auto)),
            "advise" => Ok(ModeValue(Mode::Advise)),
            other => Err(format!(
                "unknown mode {}; use \"auto\" (widen the range within the bounds) \
                 or \"advise\" (alert only, never write)",
                shown(other)
            )),
        })
    }
}

fn port(number: i128) -> Result<u16, String> {
    u16::try_from(number)
        .ok()
        .filter(|&p| p >= 1)
        .ok_or_else(|| format!("{number} is not a port number; use 1 to 65535"))
}

#[derive(Debug)]
struct FloorValue(Floor);

impl Leaf for FloorValue {
    const EXPECTING: &'static str = r#""initial" or a port number from 1 to 65535"#;

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        match value {
            Scalar::Int(i) => Some(port(i).map(|p| FloorValue(Floor::Port(p)))),
            Scalar::Str("initial") => Some(Ok(FloorValue(Floor::Initial))),
            Scalar::Str(other) => Some(Err(format!(
                "unknown floor {}; use \"initial\" (the low end portd first found: \
                 grow upward only) or a port number from 1 to 65535",
                shown(other)
            ))),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct PortNumber(u16);

impl Leaf for PortNumber {
    const EXPECTING: &'static str = "a port number from 1 to 65535";

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        match value {
            Scalar::Int(i) => Some(port(i).map(PortNumber)),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct ChangesPerHour(u32);

impl Leaf for ChangesPerHour {
    const EXPECTING: &'static str = "a whole number of at least 1";

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        let Scalar::Int(i) = value else {
            return None;
        };
        Some(
            u32::try_from(i)
                .ok()
                .filter(|&n| n >= 1)
                .map(ChangesPerHour)
                .ok_or_else(|| {
                    format!(
                        "{i} is not allowed; use a whole number of at least 1 \
                         (to never change the range, set mode = \"advise\")"
                    )
                }),
        )
    }
}

/// One element of `protected`: `8080`, `"8080"` or `"9000-9100"`.
#[derive(Debug)]
struct ProtectedEntry(PortRange);

impl Leaf for ProtectedEntry {
    const EXPECTING: &'static str = r#"a port such as 8080 or a range such as "9000-9100""#;

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        match value {
            Scalar::Int(i) => Some(port(i).map(|p| ProtectedEntry(single(p)))),
            Scalar::Str(text) => Some(protected_range(text).map(ProtectedEntry)),
            _ => None,
        }
    }
}

fn single(port: u16) -> PortRange {
    // Proven: `port` >= 1, and low == high.
    PortRange::new(port, port).unwrap_or_else(|_| unreachable!("a single port >= 1 is a range"))
}

fn protected_range(text: &str) -> Result<PortRange, String> {
    let not_a_range = || {
        format!(
            "{} is not a port or a port range; write a port like 8080 or a range like \"9000-9100\"",
            shown(text)
        )
    };
    let number = |part: &str| -> Result<u16, String> {
        let part = part.trim();
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_a_range());
        }
        port(part.parse::<i128>().map_err(|_| not_a_range())?)
    };
    let Some((low, high)) = text.split_once('-') else {
        return number(text).map(single);
    };
    let (low, high) = (number(low)?, number(high)?);
    if low > high {
        return Err(format!(
            "range {} is written backwards; write it low-high: \"{high}-{low}\"",
            shown(text)
        ));
    }
    PortRange::new(low, high).map_err(|e| format!("range {}: {e}", shown(text)))
}

/// `widen.protected`: every entry is checked on its own and kept with its
/// place, so that all bad entries are reported, not only the first.
#[derive(Debug)]
struct ProtectedList(Vec<Spanned<Checked<ProtectedEntry>>>);

impl<'de> Deserialize<'de> for ProtectedList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = ProtectedList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a list of ports and port ranges, such as [8080, "9000-9100"]"#)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ProtectedList, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    entries.push(entry);
                }
                Ok(ProtectedList(entries))
            }
        }

        d.deserialize_seq(ListVisitor)
    }
}

/// A leaf value, or the message saying what is wrong with it: a list goes
/// on after a bad element instead of stopping there.
#[derive(Debug)]
struct Checked<T>(Result<T, String>);

impl<'de, T: Leaf> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor::<T>(PhantomData))
    }
}

struct CheckedVisitor<T>(PhantomData<T>);

impl<T: Leaf> CheckedVisitor<T> {
    fn leaf() -> LeafVisitor<T> {
        LeafVisitor(PhantomData)
    }
}

fn checked<T>(result: Result<T, de::value::Error>) -> Checked<T> {
    Checked(result.map_err(|e| e.to_string()))
}

impl<'de, T: Leaf> Visitor<'de> for CheckedVisitor<T> {
    type Value = Checked<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Checked<T>, E> {
        Ok(checked(Self::leaf().visit_i64(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Checked<T>, E> {
        Ok(checked(Self::leaf().visit_u64(v)))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Checked<T>, E> {
        Ok(checked(Self::leaf().visit_i128(v)))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Checked<T>, E> {
        Ok(checked(Self::leaf().visit_u128(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Checked<T>, E> {
        Ok(checked(Self::leaf().visit_f64(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Checked<T>, E> {
        Ok(checked(Self::leaf().visit_str(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Checked<T>, E> {
        Ok(checked(Self::leaf().visit_bool(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked<T>, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Checked(Err(<de::value::Error as de::Error>::invalid_type(
            Unexpected::Other("array"),
            &self,
        )
        .to_string())))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Checked<T>, A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Checked(Err(<de::value::Error as de::Error>::invalid_type(
            Unexpected::Other("table"),
            &self,
        )
        .to_string())))
    }
}

/// The drop-in's file name under `/etc/sysctl.d`.
#[derive(Debug)]
struct DropinName(String);

impl Leaf for DropinName {
    const EXPECTING: &'static str = r#"a file name ending in ".conf", such as "60-portd.conf""#;

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        let Scalar::Str(name) = value else {
            return None;
        };
        // systemd-sysctl reads only `*.conf` files and skips hidden ones.
        // The name also goes into log lines and shell commands: plain
        // characters only (no newline, space or quote).
        let stem = name.strip_suffix(".conf").unwrap_or("");
        let plain = |c: char| c.is_ascii_alphanumeric() || "-_.+@".contains(c);
        Some(
            if stem.is_empty() || name.starts_with('.') || !name.chars().all(plain) {
                Err(format!(
                    "{} is not a usable drop-in name; use a bare file name of letters, digits \
                     and - _ . + @ (no '/', not hidden) ending in \".conf\", such as \
                     \"60-portd.conf\"",
                    shown(name)
                ))
            } else {
                Ok(DropinName(name.to_string()))
            },
        )
    }
}

/// `""` for no metrics file, or an absolute path.
#[derive(Debug)]
struct MetricsPath(Option<PathBuf>);

impl Leaf for MetricsPath {
    const EXPECTING: &'static str = r#"an absolute path, or "" for no metrics file"#;

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        let Scalar::Str(text) = value else {
            return None;
        };
        let path = Path::new(text);
        Some(if text.is_empty() {
            Ok(MetricsPath(None))
        } else if !text.starts_with('/') || text.contains('\0') {
            Err(format!(
                "{} is not an absolute path; write a path starting with '/', \
                 or \"\" for no metrics file",
                shown(text)
            ))
        } else if text.chars().any(char::is_control)
            || path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            Err(format!(
                "{} is not a plain path; write it without \"..\" and without control \
                 characters, such as \"/run/portd/metrics.prom\"",
                shown(text)
            ))
        } else {
            // Normalized (no "//" or "/./"), so that portd's own files are recognized.
            Ok(MetricsPath(Some(path.components().collect())))
        })
    }
}

// ---------------------------------------------------------------------------
// From the raw file to the policy: defaults for what is missing, then the
// relations between keys.

fn value<T, U>(raw: &Opt<T>, convert: impl FnOnce(&T) -> U, default: U) -> U {
    raw.as_ref().map_or(default, |v| convert(v.get_ref()))
}

fn validate(raw: RawPolicy, report: &mut Report<'_>) -> Policy {
    let RawPolicy {
        poll: Section(poll),
        thresholds: Section(thresholds),
        widen: Section(widen),
        persist: Section(persist),
        alerts: Section(alerts),
        metrics: Section(metrics),
    } = raw;
    let d = Policy::default();
    let duration = |v: &HumanDuration| v.0;

    check_durations(report, &poll, &alerts);
    let protected = match &widen.protected {
        Some(list) => protected_ranges(report, list.get_ref()),
        None => d.protected.clone(),
    };
    if let Some(metrics_file) = &metrics.file
        && let Some(path) = &metrics_file.get_ref().0
        && let Some(owner) = portd_file(path, report.path)
    {
        report.error(
            Some(metrics_file.span()),
            format!(
                "metrics.file: {} is {owner}; portd would overwrite it with metrics. \
                 Use a file of its own, such as \"/run/portd/metrics.prom\"",
                shown(&path.display().to_string())
            ),
        );
    }

    let warning = Level::new("thresholds.warning", &thresholds.warning, d.warning);
    let critical = Level::new("thresholds.critical", &thresholds.critical, d.critical);
    let clear = Level::new("thresholds.clear", &thresholds.clear, d.clear);
    let target = Level::new("widen.target", &widen.target, d.target);
    check_order(
        report,
        &clear,
        &warning,
        Order::Below,
        "an alert clears only when usage falls below clear",
    );
    check_order(
        report,
        &warning,
        &critical,
        Order::AtMost,
        "a level is warning before it is critical",
    );
    check_order(
        report,
        &target,
        &warning,
        Order::Below,
        "widening must bring usage below the warning level",
    );

    let floor = value(&widen.floor, |f| f.0, d.floor);
    let ceiling = value(&widen.ceiling, |c| c.0, d.ceiling);
    if let (Some(raw_floor), Floor::Port(low)) = (&widen.floor, floor)
        && low > ceiling
        && !report.is_dropped("widen.ceiling")
    {
        report.error(
            Some(raw_floor.span()),
            format!(
                "widen.floor: floor {low} is above widen.ceiling ({ceiling}); \
                 the floor must be at most the ceiling"
            ),
        );
    }

    Policy {
        interval: value(&poll.interval, duration, d.interval),
        max_staleness: value(&poll.max_staleness, duration, d.max_staleness),
        warning: warning.ratio,
        critical: critical.ratio,
        clear: clear.ratio,
        hold: value(&thresholds.hold, duration, d.hold),
        tcp_pool_alerts: value(&thresholds.tcp_pool, |f| f.0, d.tcp_pool_alerts),
        mode: value(&widen.mode, |m| m.0, d.mode),
        floor,
        ceiling,
        target: target.ratio,
        cooldown: value(&widen.cooldown, duration, d.cooldown),
        max_changes_per_hour: value(&widen.max_changes_per_hour, |n| n.0, d.max_changes_per_hour),
        protected,
        persist: value(&persist.enabled, |f| f.0, d.persist),
        dropin_name: value(&persist.file, |n| n.0.clone(), d.dropin_name),
        reminder: value(&alerts.reminder, duration, d.reminder),
        metrics_file: value(&metrics.file, |m| m.0.clone(), d.metrics_file),
    }
}

/// Shortest poll interval: shorter only burns CPU (each poll reads /proc).
pub const INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Shortest reminder: a shorter one repeats the alert on every census.
pub const REMINDER_MIN: Duration = Duration::from_secs(1);

/// The floors of the durations, and their relations: a full census at
/// least every `max_staleness` is only possible at a poll, so it is at
/// least `poll.interval`; a reminder more often than the polls that
/// could send it means every poll.
fn check_durations(report: &mut Report<'_>, poll: &RawPoll, alerts: &RawAlerts) {
    let d = Policy::default();
    let interval = value(&poll.interval, |v| v.0, d.interval);
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if let Some(raw) = &poll.interval
        && raw.get_ref().0 < INTERVAL_MIN
    {
        report.error(
            Some(raw.span()),
            format!(
                "poll.interval: {} is below the minimum, {}; a shorter interval only burns CPU \
                 (the shipped policy uses \"10s\")",
                show(raw.get_ref().0),
                show(INTERVAL_MIN)
            ),
        );
        report.dropped.push("poll.interval".to_string());
    }
    let interval_ok = !report.is_dropped("poll.interval");
    if let Some(raw) = &poll.max_staleness
        && interval_ok
        && raw.get_ref().0 < interval
    {
        report.error(
            Some(raw.span()),
            format!(
                "poll.max_staleness: {} is below poll.interval ({}); a census can only happen \
                 at a poll, so the minimum is the interval",
                show(raw.get_ref().0),
                show(interval)
            ),
        );
    }
    if let Some(raw) = &alerts.reminder {
        let reminder = raw.get_ref().0;
        let minimum = if interval_ok {
            REMINDER_MIN.max(interval)
        } else {
            REMINDER_MIN
        };
        if reminder < minimum {
            report.error(
                Some(raw.span()),
                format!(
                    "alerts.reminder: {} is below the minimum, {} (at least 1s and at least \
                     poll.interval); a shorter one repeats the alert on every census \
                     (the shipped policy uses \"1h\")",
                    show(reminder),
                    show(minimum)
                ),
            );
        }
    }
}

/// The entries of `widen.protected`, reporting every bad one.
fn protected_ranges(report: &mut Report<'_>, list: &ProtectedList) -> Vec<PortRange> {
    let mut ranges = Vec::with_capacity(list.0.len());
    for entry in &list.0 {
        match &entry.get_ref().0 {
            Ok(ProtectedEntry(range)) => ranges.push(*range),
            Err(message) => report.error(Some(entry.span()), format!("widen.protected: {message}")),
        }
    }
    ranges
}

/// What portd itself keeps at `path`, if anything: its state directory
/// (state, lock), the sysctl.d directories (its drop-in, and files
/// systemd-sysctl would apply), the policy, and the kernel's files.
fn portd_file(path: &Path, policy: &Path) -> Option<&'static str> {
    const OWN: &[(&str, &str)] = &[
        (
            "/var/lib/portd",
            "inside portd's state directory (state.json, the lock)",
        ),
        (
            "/etc/sysctl.d",
            "inside a sysctl.d directory (portd's drop-in, boot settings)",
        ),
        (
            "/run/sysctl.d",
            "inside a sysctl.d directory (boot settings)",
        ),
        (
            "/usr/lib/sysctl.d",
            "inside a sysctl.d directory (boot settings)",
        ),
        (
            "/usr/local/lib/sysctl.d",
            "inside a sysctl.d directory (boot settings)",
        ),
        (
            "/lib/sysctl.d",
            "inside a sysctl.d directory (boot settings)",
        ),
        (
            "/etc/sysctl.conf",
            "the boot settings file /etc/sysctl.conf",
        ),
        ("/etc/portd.toml", "portd's policy file"),
        ("/proc", "a kernel file under /proc"),
        ("/sys", "a kernel file under /sys"),
        ("/dev", "a device under /dev"),
    ];
    let policy: PathBuf = policy.components().collect();
    if path == policy {
        return Some("this policy file");
    }
    OWN.iter()
        .find(|(own, _)| path.starts_with(own))
        .map(|(_, what)| *what)
}

/// A percentage key with its effective value and, if the file sets it, its span.
struct Level<'k> {
    key: &'k str,
    ratio: Ratio,
    span: Option<Range<usize>>,
}

impl<'k> Level<'k> {
    fn new(key: &'k str, raw: &Opt<Percent>, default: Ratio) -> Self {
        Level {
            key,
            ratio: value(raw, Percent::ratio, default),
            span: raw.as_ref().map(Spanned::span),
        }
    }

    fn shown(&self) -> String {
        // Round away the binary noise of `percent()`: 0.07 * 100 is 7.000000000000001.
        format!("{}%", (self.ratio.percent() * 1e9).round() / 1e9)
    }
}

enum Order {
    Below,
    AtMost,
}

/// Checks `lower < higher` (or `<=`) and blames the key the file sets:
/// `lower` if it sets both.
fn check_order(
    report: &mut Report<'_>,
    lower: &Level<'_>,
    higher: &Level<'_>,
    order: Order,
    why: &str,
) {
    if report.is_dropped(lower.key) || report.is_dropped(higher.key) {
        return;
    }
    let (holds, relation) = match order {
        Order::Below => (lower.ratio.0 < higher.ratio.0, "below"),
        Order::AtMost => (lower.ratio.0 <= higher.ratio.0, "at most"),
    };
    if holds {
        return;
    }
    let (blamed, relation, other) = match (&lower.span, &higher.span) {
        (Some(_), _) => (lower, relation, higher),
        (None, Some(_)) => (higher, inverse(relation), lower),
        (None, None) => return, // the defaults themselves satisfy every relation
    };
    report.error(
        blamed.span.clone(),
        format!(
            "{}: {} must be {relation} {} ({}); {why}",
            blamed.key,
            blamed.shown(),
            other.key,
            other.shown()
        ),
    );
}

fn inverse(relation: &str) -> &'static str {
    if relation == "below" {
        "above"
    } else {
        "at least"
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
