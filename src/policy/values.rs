//! Leaf values: each checks its own value, with a message that says what
//! is allowed.

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
use toml::Spanned;

use super::namespaces::Selector;
use super::{Floor, Mode};
use crate::base::ports::{Port, PortRange, Ratio};

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
    MetricsPath,
    SelectorValue
);

/// Longest duration accepted anywhere: a year. Longer values are typos, and
/// would overflow timer arithmetic.
const DURATION_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug)]
pub(super) struct HumanDuration(pub(super) Duration);

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

/// A share of capacity written in percent: above 0, at most 100
/// ([`super::thresholds::percent`], the rule `status` applies too).
#[derive(Debug)]
pub(super) struct Percent(pub(super) Ratio);

impl Leaf for Percent {
    const EXPECTING: &'static str = "a percentage above 0 and at most 100, such as 40 or 12.5";

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        let percent = match value {
            Scalar::Int(i) => i as f64,
            Scalar::Float(f) => f,
            _ => return None,
        };
        Some(
            super::thresholds::percent(percent)
                .map(Percent)
                .map_err(|e| e.to_string()),
        )
    }
}

impl Percent {
    pub(super) fn ratio(&self) -> Ratio {
        self.0
    }
}

#[derive(Debug)]
pub(super) struct Flag(pub(super) bool);

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
pub(super) struct ModeValue(pub(super) Mode);

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

fn port(number: i128) -> Result<Port, String> {
    u16::try_from(number)
        .ok()
        .and_then(Port::new)
        .ok_or_else(|| format!("{number} is not a port number; use 1 to 65535"))
}

#[derive(Debug)]
pub(super) struct FloorValue(pub(super) Floor);

impl Leaf for FloorValue {
    const EXPECTING: &'static str = r#""initial" or a port number from 1 to 65535"#;

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        match value {
            Scalar::Int(i) => Some(port(i).map(|p| FloorValue(Floor::Port(p.get())))),
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
pub(super) struct PortNumber(pub(super) Port);

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
pub(super) struct ChangesPerHour(pub(super) NonZeroU32);

impl Leaf for ChangesPerHour {
    const EXPECTING: &'static str = "a whole number of at least 1";

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        let Scalar::Int(i) = value else {
            return None;
        };
        Some(
            u32::try_from(i)
                .ok()
                .and_then(NonZeroU32::new)
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
pub(super) struct ProtectedEntry(pub(super) PortRange);

impl Leaf for ProtectedEntry {
    const EXPECTING: &'static str = r#"a port such as 8080 or a range such as "9000-9100""#;

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        match value {
            Scalar::Int(i) => Some(port(i).map(|p| ProtectedEntry(single(p.get())))),
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
        port(part.parse::<i128>().map_err(|_| not_a_range())?).map(Port::get)
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
pub(super) struct ProtectedList(pub(super) Vec<Spanned<Checked<ProtectedEntry>>>);

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

/// One entry of `namespaces.select`.
#[derive(Debug)]
pub(super) struct SelectorValue(pub(super) Selector);

impl Leaf for SelectorValue {
    const EXPECTING: &'static str = Selector::EXPECTING;

    fn from_scalar(value: Scalar<'_>) -> Option<Result<Self, String>> {
        let Scalar::Str(text) = value else {
            return None;
        };
        Some(
            Selector::parse(text)
                .map(SelectorValue)
                .map_err(|e| format!("{}: {e}", shown(text))),
        )
    }
}

/// `namespaces.select`: like `widen.protected`, every entry checked on its
/// own, so that all bad entries are reported.
#[derive(Debug)]
pub(super) struct SelectorList(pub(super) Vec<Spanned<Checked<SelectorValue>>>);

impl<'de> Deserialize<'de> for SelectorList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SelectorListVisitor;

        impl<'de> Visitor<'de> for SelectorListVisitor {
            type Value = SelectorList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a list of selectors, such as ["netns:blue", "pod:shop/*"]"#)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SelectorList, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    entries.push(entry);
                }
                Ok(SelectorList(entries))
            }
        }

        d.deserialize_seq(SelectorListVisitor)
    }
}

/// A leaf value, or the message saying what is wrong with it: a list goes
/// on after a bad element instead of stopping there.
#[derive(Debug)]
pub(super) struct Checked<T>(pub(super) Result<T, String>);

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
pub(super) struct DropinName(pub(super) String);

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
pub(super) struct MetricsPath(pub(super) Option<PathBuf>);

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

/// A value as diagnostics show it: quoted, and cut after [`SHOWN_CHARS`]
/// characters with its size, so a 5 MB value does not become a 5 MB line.
pub(super) fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
    }
}

const SHOWN_CHARS: usize = 60;

/// A key name as diagnostics show it inside backticks: cut like [`shown`].
pub(super) fn bare(name: &str) -> String {
    match name.char_indices().nth(SHOWN_CHARS) {
        None => name.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &name[..cut], name.len()),
    }
}
