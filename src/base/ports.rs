//! Unit types for ports and fractions, the bottom layer every other module
//! builds on: a range end (`Port`), a range (`PortRange`), a set of ports
//! (`PortSet`) and a fraction of a capacity (`Ratio`). Each refuses what it
//! cannot mean, so a bare `u16` or `f64` never has to be trusted past here.

use std::fmt;
use std::num::NonZeroU16;
use std::ops::RangeInclusive;

use serde::Serialize;

/// Why a text or a number is not a port, a port range or a list of ports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("port 0 cannot end a range; use 1 to 65535")]
    Zero,
    #[error("low port {low} is below 1")]
    LowBelowOne { low: u16 },
    #[error("low port {low} is above high port {high}")]
    Backwards { low: u16, high: u16 },
    #[error("expected two port numbers \"LOW HIGH\", found {0:?}")]
    NotAPair(String),
    #[error("{0:?} is not a port number (0-65535)")]
    NotANumber(String),
    #[error("reserved range {0:?} is written backwards")]
    ReservedBackwards(String),
}

/// A port that can end a range: 1 to 65535. Port 0 is not a port
/// `connect()` can hand out (`ipv4_local_port_range()` refuses it), though
/// `ip_local_reserved_ports` may list it: a [`PortSet`] holds bare `u16`s.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(NonZeroU16);

impl Port {
    /// The highest port number (`ip_local_port_range_max`, net/ipv4/sysctl_net_ipv4.c).
    pub const MAX: Port = Port(NonZeroU16::MAX);

    /// `None` for port 0.
    pub const fn new(number: u16) -> Option<Port> {
        match NonZeroU16::new(number) {
            Some(n) => Some(Port(n)),
            None => None,
        }
    }

    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl TryFrom<u16> for Port {
    type Error = PortError;

    fn try_from(number: u16) -> Result<Port, PortError> {
        Port::new(number).ok_or(PortError::Zero)
    }
}

impl From<Port> for u16 {
    fn from(port: Port) -> u16 {
        port.get()
    }
}

/// As a plain number, so a `PortRange` debugs as `{ low: 32768, high: 60999 }`.
impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl Serialize for Port {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.get())
    }
}

/// An inclusive range of ports with `low <= high`, both at least 1: exactly the
/// pairs `ipv4_local_port_range()` accepts apart from `ip_unprivileged_port_start`
/// (net/ipv4/sysctl_net_ipv4.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    low: Port,
    high: Port,
}

impl PortRange {
    pub fn new(low: u16, high: u16) -> Result<Self, PortError> {
        let Some(low_port) = Port::new(low) else {
            return Err(PortError::LowBelowOne { low });
        };
        if low > high {
            return Err(PortError::Backwards { low, high });
        }
        // high >= low >= 1.
        let high = Port::new(high).ok_or(PortError::Zero)?;
        Ok(PortRange {
            low: low_port,
            high,
        })
    }

    /// The range from `low` to `high`; refused when they are backwards.
    pub fn between(low: Port, high: Port) -> Result<Self, PortError> {
        PortRange::new(low.get(), high.get())
    }

    /// The low end as a number (arithmetic on ports is done in `u16`/`u32`).
    pub fn low(self) -> u16 {
        self.low.get()
    }

    pub fn high(self) -> u16 {
        self.high.get()
    }

    pub fn low_port(self) -> Port {
        self.low
    }

    pub fn high_port(self) -> Port {
        self.high
    }

    /// Number of ports in the range.
    pub fn len(self) -> u32 {
        u32::from(self.high()) - u32::from(self.low()) + 1
    }

    pub fn is_empty(self) -> bool {
        false
    }

    pub fn contains(self, port: u16) -> bool {
        self.low() <= port && port <= self.high()
    }

    pub fn contains_range(self, other: PortRange) -> bool {
        self.low <= other.low && other.high <= self.high
    }

    /// `connect()` scans ports of `low`'s parity first and drops one candidate
    /// when the count is odd; with ends of the same parity one port per
    /// destination can become unreachable (`__inet_hash_connect`,
    /// net/ipv4/inet_hashtables.c; docs/kernel.md §1.5). The kernel logs
    /// "prefer different parity for start/end values" for such a write.
    pub fn has_same_parity(self) -> bool {
        self.low() % 2 == self.high() % 2
    }

    /// Parses the kernel's output (`"low\thigh\n"`) or any whitespace-separated pair.
    pub fn parse(text: &str) -> Result<Self, PortError> {
        let mut parts = text.split_whitespace();
        let (Some(low), Some(high), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PortError::NotAPair(text.trim().to_string()));
        };
        let low = parse_port(low)?;
        let high = parse_port(high)?;
        PortRange::new(low, high)
    }

    /// The value to write to `/proc/sys/net/ipv4/ip_local_port_range`: plain
    /// decimal without leading zeros (a leading 0 is read as octal), one line
    /// (docs/kernel.md §1.2).
    pub fn to_sysctl_value(self) -> String {
        format!("{} {}\n", self.low, self.high)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("PortRange", 2)?;
        st.serialize_field("low", &self.low)?;
        st.serialize_field("high", &self.high)?;
        st.end()
    }
}

impl<'de> serde::Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Raw {
            low: u16,
            high: u16,
        }
        let raw = Raw::deserialize(d)?;
        PortRange::new(raw.low, raw.high).map_err(serde::de::Error::custom)
    }
}

fn parse_port(text: &str) -> Result<u16, PortError> {
    text.parse::<u16>()
        .map_err(|_| PortError::NotANumber(text.to_string()))
}

/// A set of ports, as `ip_local_reserved_ports` holds them: a 65536-bit bitmap
/// (`proc_do_large_bitmap`, kernel/sysctl.c).
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet {
    bits: Box<[u64; 1024]>,
}

impl Default for PortSet {
    fn default() -> Self {
        PortSet {
            bits: Box::new([0; 1024]),
        }
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortSet({self})")
    }
}

impl PortSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every port, 0 to 65535.
    pub fn all() -> Self {
        PortSet {
            bits: Box::new([u64::MAX; 1024]),
        }
    }

    /// Returns true if the port was not in the set before.
    pub fn insert(&mut self, port: u16) -> bool {
        let (word, bit) = (usize::from(port) / 64, port % 64);
        let was = self.bits[word] & (1 << bit) != 0;
        self.bits[word] |= 1 << bit;
        !was
    }

    pub fn remove(&mut self, port: u16) {
        let (word, bit) = (usize::from(port) / 64, port % 64);
        self.bits[word] &= !(1 << bit);
    }

    pub fn insert_range(&mut self, range: PortRange) {
        for p in range.low()..=range.high() {
            self.insert(p);
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.bits[usize::from(port) / 64] & (1 << (port % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> u32 {
        self.bits.iter().map(|w| w.count_ones()).sum()
    }

    /// Number of ports of the set inside `range`.
    pub fn count_in(&self, range: PortRange) -> u32 {
        (range.low()..=range.high())
            .filter(|p| self.contains(*p))
            .count() as u32
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|p| self.contains(*p))
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut out = self.clone();
        for (a, b) in out.bits.iter_mut().zip(other.bits.iter()) {
            *a |= *b;
        }
        out
    }

    /// Ports in `self` that are not in `other`.
    pub fn difference(&self, other: &PortSet) -> PortSet {
        let mut out = self.clone();
        for (a, b) in out.bits.iter_mut().zip(other.bits.iter()) {
            *a &= !*b;
        }
        out
    }

    /// Ports in both sets.
    pub fn intersection_of(&self, other: &PortSet) -> PortSet {
        let mut out = self.clone();
        for (a, b) in out.bits.iter_mut().zip(other.bits.iter()) {
            *a &= *b;
        }
        out
    }

    /// Number of ports in both sets.
    pub fn intersection_len(&self, other: &PortSet) -> u32 {
        self.bits
            .iter()
            .zip(other.bits.iter())
            .map(|(a, b)| (a & b).count_ones())
            .sum()
    }

    pub fn is_subset(&self, other: &PortSet) -> bool {
        self.bits
            .iter()
            .zip(other.bits.iter())
            .all(|(a, b)| a & !b == 0)
    }

    /// Maximal runs of consecutive ports, ascending. A run may start at
    /// port 0, which the set may hold but a [`PortRange`] may not.
    pub fn runs(&self) -> Vec<RangeInclusive<u16>> {
        let mut runs = Vec::new();
        let mut start: Option<u16> = None;
        let mut prev = 0u16;
        for p in self.iter() {
            match start {
                Some(_) if p == prev + 1 => {}
                Some(s) => {
                    runs.push(s..=prev);
                    start = Some(p);
                }
                None => start = Some(p),
            }
            prev = p;
        }
        if let Some(s) = start {
            runs.push(s..=prev);
        }
        runs
    }

    /// Parses the syntax of `ip_local_reserved_ports`: a comma-separated list
    /// of `N` or `A-B` with `A <= B`, no spaces inside; empty means no ports
    /// (docs/kernel.md §2.1). Port 0 is accepted because the kernel accepts it.
    pub fn parse(text: &str) -> Result<Self, PortError> {
        let mut set = PortSet::new();
        let text = text.trim_end_matches('\n');
        if text.trim().is_empty() {
            return Ok(set);
        }
        for item in text.split(',') {
            if item.is_empty() {
                continue; // the kernel accepts a trailing comma
            }
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse_port(a)?, parse_port(b)?);
                    if a > b {
                        return Err(PortError::ReservedBackwards(item.to_string()));
                    }
                    for p in a..=b {
                        set.insert(p);
                    }
                }
                None => {
                    set.insert(parse_port(item)?);
                }
            }
        }
        Ok(set)
    }

    /// The value for `ip_local_reserved_ports`: normalised like the kernel
    /// prints it (sorted, merged runs), without the newline.
    pub fn to_sysctl_list(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, run) in self.runs().into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let (low, high) = run.into_inner();
            if low == high {
                write!(f, "{low}")?;
            } else {
                write!(f, "{low}-{high}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for PortSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for PortSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PortSet::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a number is not a [`Ratio`].
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum RatioError {
    #[error("{0} is not a usable percentage: it must be a number of at least 0")]
    Percent(f64),
    #[error("{0} is not a usable fraction: it must be a number of at least 0")]
    Fraction(f64),
}

/// A fraction of a capacity: 0.0 is empty, 1.0 is full. Never negative and
/// never NaN or infinite; above 1.0 when more is in use than the capacity
/// (a capacity that shrank under the sockets holding it).
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Ratio(f64);

impl Ratio {
    pub const ZERO: Ratio = Ratio(0.0);
    pub const FULL: Ratio = Ratio(1.0);

    /// `used / capacity`; a capacity of zero is full (no port can be had).
    pub fn of(used: u64, capacity: u64) -> Ratio {
        if capacity == 0 {
            Ratio::FULL
        } else {
            Ratio(used as f64 / capacity as f64)
        }
    }

    /// `percent` / 100, for a percentage someone wrote down.
    pub fn from_percent(percent: f64) -> Result<Ratio, RatioError> {
        if percent.is_finite() && percent >= 0.0 {
            Ok(Ratio(percent / 100.0))
        } else {
            Err(RatioError::Percent(percent))
        }
    }

    /// The fraction itself: 0.25 is a quarter.
    pub fn from_fraction(fraction: f64) -> Result<Ratio, RatioError> {
        if fraction.is_finite() && fraction >= 0.0 {
            Ok(Ratio(fraction))
        } else {
            Err(RatioError::Fraction(fraction))
        }
    }

    /// A whole percentage, for constants: `Ratio::whole_percent(40)` is 40 %.
    pub const fn whole_percent(percent: u8) -> Ratio {
        Ratio(percent as f64 / 100.0)
    }

    pub fn fraction(self) -> f64 {
        self.0
    }

    pub fn percent(self) -> f64 {
        self.0 * 100.0
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}%", self.percent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_cannot_end_a_range() {
        assert_eq!(Port::new(0), None);
        assert_eq!(Port::try_from(0), Err(PortError::Zero));
        assert_eq!(Port::new(1).map(Port::get), Some(1));
        assert_eq!(Port::MAX.get(), 65535);
        assert_eq!(Port::try_from(8080).map(u16::from), Ok(8080));
    }

    #[test]
    fn ports_serialize_and_print_as_plain_numbers() {
        let port = Port::new(40000).unwrap();
        assert_eq!(port.to_string(), "40000");
        assert_eq!(
            format!("{:?}", PortRange::new(32768, 60999).unwrap()),
            "PortRange { low: 32768, high: 60999 }"
        );
        assert_eq!(serde_json::to_string(&port).unwrap(), "40000");
    }

    #[test]
    fn a_range_starts_at_1_and_is_never_backwards() {
        assert_eq!(
            PortRange::new(0, 100),
            Err(PortError::LowBelowOne { low: 0 })
        );
        assert_eq!(PortRange::new(0, 0), Err(PortError::LowBelowOne { low: 0 }));
        assert_eq!(
            PortRange::new(40010, 40000),
            Err(PortError::Backwards {
                low: 40010,
                high: 40000
            })
        );
        let one = PortRange::new(1, 1).unwrap();
        assert_eq!((one.low(), one.high(), one.len()), (1, 1, 1));
        let full = PortRange::between(Port::new(1).unwrap(), Port::MAX).unwrap();
        assert_eq!(full.len(), 65535);
        assert_eq!(full.high_port(), Port::MAX);
        assert!(PortRange::between(Port::MAX, Port::new(1).unwrap()).is_err());
    }

    #[test]
    fn port_range_errors_say_what_was_refused() {
        assert_eq!(
            PortRange::new(0, 100).unwrap_err().to_string(),
            "low port 0 is below 1"
        );
        assert_eq!(
            PortRange::new(5, 4).unwrap_err().to_string(),
            "low port 5 is above high port 4"
        );
        assert_eq!(
            PortRange::parse(" 40000 \n").unwrap_err().to_string(),
            "expected two port numbers \"LOW HIGH\", found \"40000\""
        );
        assert_eq!(
            PortRange::parse("40000 65536").unwrap_err().to_string(),
            "\"65536\" is not a port number (0-65535)"
        );
        assert_eq!(
            PortSet::parse("5-3").unwrap_err().to_string(),
            "reserved range \"5-3\" is written backwards"
        );
    }

    #[test]
    fn a_range_deserializes_only_when_valid() {
        let r: PortRange = serde_json::from_str(r#"{"low":32768,"high":60999}"#).unwrap();
        assert_eq!(r, PortRange::new(32768, 60999).unwrap());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"low":32768,"high":60999}"#
        );
        assert!(serde_json::from_str::<PortRange>(r#"{"low":0,"high":10}"#).is_err());
        assert!(serde_json::from_str::<PortRange>(r#"{"low":10,"high":9}"#).is_err());
    }

    #[test]
    fn a_reserved_list_may_hold_port_0() {
        let s = PortSet::parse("0-2,5").unwrap();
        assert!(s.contains(0));
        assert_eq!(s.len(), 4);
        assert_eq!(s.to_string(), "0-2,5");
        assert_eq!(s.runs(), vec![0..=2, 5..=5]);
        assert_eq!(PortSet::all().runs(), vec![0..=u16::MAX]);
    }

    #[test]
    fn ratio_of_a_zero_capacity_is_full() {
        assert_eq!(Ratio::of(0, 0), Ratio::FULL);
        assert_eq!(Ratio::of(5, 0), Ratio::FULL);
        assert_eq!(Ratio::of(1, 4).fraction(), 0.25);
        assert_eq!(Ratio::of(0, 4), Ratio::ZERO);
    }

    #[test]
    fn ratio_from_percent_refuses_nan_infinity_and_negatives() {
        assert_eq!(Ratio::from_percent(40.0).map(Ratio::fraction), Ok(0.4));
        assert_eq!(Ratio::from_percent(0.0), Ok(Ratio::ZERO));
        assert_eq!(Ratio::from_percent(100.0), Ok(Ratio::FULL));
        assert!(Ratio::from_percent(f64::NAN).is_err());
        assert!(Ratio::from_percent(f64::INFINITY).is_err());
        assert!(Ratio::from_percent(-0.1).is_err());
        assert!(Ratio::from_fraction(f64::NAN).is_err());
        assert!(Ratio::from_fraction(f64::NEG_INFINITY).is_err());
        assert!(Ratio::from_fraction(-1.0).is_err());
        assert_eq!(
            Ratio::from_percent(-5.0).unwrap_err().to_string(),
            "-5 is not a usable percentage: it must be a number of at least 0"
        );
    }

    #[test]
    fn ratio_prints_as_a_percentage_with_one_decimal() {
        assert_eq!(Ratio::whole_percent(40).to_string(), "40.0%");
        assert_eq!(Ratio::whole_percent(40), Ratio::from_percent(40.0).unwrap());
        assert_eq!(Ratio::of(1, 3).to_string(), "33.3%");
        assert_eq!(serde_json::to_string(&Ratio::of(1, 4)).unwrap(), "0.25");
    }

    #[test]
    fn port_range_parses_kernel_output() {
        let r = PortRange::parse("32768\t60999\n").unwrap();
        assert_eq!((r.low(), r.high(), r.len()), (32768, 60999, 28232));
        assert!(!r.has_same_parity());
        assert_eq!(r.to_sysctl_value(), "32768 60999\n");
    }

    #[test]
    fn port_range_rejects_what_the_kernel_rejects() {
        assert!(PortRange::parse("40010 40000").is_err());
        assert!(PortRange::parse("0 100").is_err());
        assert!(PortRange::parse("40000 65536").is_err());
        assert!(PortRange::parse("40000").is_err());
        assert!(PortRange::parse("40000 40001 5").is_err());
    }

    #[test]
    fn reserved_ports_round_trip_like_the_kernel() {
        let s = PortSet::parse("1-3,2-5,7\n").unwrap();
        assert_eq!(s.to_string(), "1-5,7");
        assert_eq!(PortSet::parse("40000,").unwrap().to_string(), "40000");
        assert!(PortSet::parse("5-3").is_err());
        assert!(PortSet::parse("65536").is_err());
        assert!(PortSet::parse("\n").unwrap().is_empty());
        let r = PortRange::new(3, 10).unwrap();
        assert_eq!(s.count_in(r), 4);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever a /proc file or a fixture holds: an error or a value, no
        /// panic; an error quotes what it refused (the caller names the file).
        #[test]
        fn arbitrary_text_never_panics_the_sysctl_parsers(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            listish in "[0-9,\\- \n]{0,40}",
        ) {
            for text in [String::from_utf8_lossy(&bytes).into_owned(), listish] {
                if let Err(e) = PortRange::parse(&text) {
                    proptest::prop_assert!(!e.to_string().is_empty());
                }
                match PortSet::parse(&text) {
                    Ok(set) => proptest::prop_assert_eq!(PortSet::parse(&set.to_string()).unwrap(), set),
                    Err(e) => proptest::prop_assert!(e.to_string().contains('"'), "{}", e),
                }
            }
        }

        #[test]
        fn port_set_display_parses_back(ports in proptest::collection::vec(0u16..=u16::MAX, 0..200)) {
            let mut s = PortSet::new();
            for p in &ports { s.insert(*p); }
            let back = PortSet::parse(&s.to_string()).unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }
}
