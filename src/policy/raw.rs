//! The file as written: every section and key optional, unknown keys
//! refused. Each key holds a leaf value of [`super::values`], with its span.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
use toml::Spanned;

use super::values::{
    ChangesPerHour, DropinName, Flag, FloorValue, HumanDuration, MetricsPath, ModeValue, Percent,
    PortNumber, ProtectedList, SelectorList,
};

pub(super) type Opt<T> = Option<Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) poll: Section<RawPoll>,
    pub(super) thresholds: Section<RawThresholds>,
    pub(super) widen: Section<RawWiden>,
    pub(super) persist: Section<RawPersist>,
    pub(super) alerts: Section<RawAlerts>,
    pub(super) metrics: Section<RawMetrics>,
    pub(super) namespaces: Section<RawNamespaces>,
}

/// A section of the file. Only a table will do: the derived struct visitor
/// would also take an array (`[[widen]]`), element by element as fields.
#[derive(Debug, Default)]
pub(super) struct Section<T>(pub(super) T);

pub(super) trait SectionName {
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
    RawMetrics => "metrics",
    RawNamespaces => "namespaces"
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
pub(super) struct RawPoll {
    pub(super) interval: Opt<HumanDuration>,
    pub(super) max_staleness: Opt<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawThresholds {
    pub(super) warning: Opt<Percent>,
    pub(super) critical: Opt<Percent>,
    pub(super) clear: Opt<Percent>,
    pub(super) hold: Opt<HumanDuration>,
    pub(super) tcp_pool: Opt<Flag>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawWiden {
    pub(super) mode: Opt<ModeValue>,
    pub(super) floor: Opt<FloorValue>,
    pub(super) ceiling: Opt<PortNumber>,
    pub(super) target: Opt<Percent>,
    pub(super) cooldown: Opt<HumanDuration>,
    pub(super) max_changes_per_hour: Opt<ChangesPerHour>,
    pub(super) protected: Opt<ProtectedList>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawPersist {
    pub(super) enabled: Opt<Flag>,
    pub(super) file: Opt<DropinName>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub(super) reminder: Opt<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) file: Opt<MetricsPath>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawNamespaces {
    pub(super) mode: Opt<ModeValue>,
    pub(super) select: Opt<SelectorList>,
}
