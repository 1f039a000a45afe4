//! Kernel facts about ephemeral ports, each in one place with its source.
//!
//! Everything here is pure: parsing and formatting of the sysctl values and the
//! rules the kernel applies to them. Reading and writing the files is done
//! elsewhere (`census::settings`, the actuator).

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// Highest port number (`ip_local_port_range_max`, net/ipv4/sysctl_net_ipv4.c).
pub const PORT_MAX: u16 = 65535;

/// Default `ip_unprivileged_port_start` (`PROT_SOCK`, include/net/sock.h).
pub const DEFAULT_UNPRIVILEGED_PORT_START: u16 = 1024;

/// The sysctl keys portd reads or writes, as `sysctl.d` spells them.
pub const KEY_PORT_RANGE: &str = "net.ipv4.ip_local_port_range";
pub const KEY_RESERVED_PORTS: &str = "net.ipv4.ip_local_reserved_ports";
pub const KEY_UNPRIVILEGED_PORT_START: &str = "net.ipv4.ip_unprivileged_port_start";
pub const KEY_TCP_TW_REUSE: &str = "net.ipv4.tcp_tw_reuse";
pub const KEY_TCP_TIMESTAMPS: &str = "net.ipv4.tcp_timestamps";

/// The `/proc/sys` path of a sysctl key, relative to the proc root.
pub fn sysctl_path(key: &str) -> String {
    format!("sys/{}", key.replace('.', "/"))
}

/// An inclusive range of ports with `low <= high`, both at least 1: exactly the
/// pairs `ipv4_local_port_range()` accepts apart from `ip_unprivileged_port_start`
/// (net/ipv4/sysctl_net_ipv4.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    low: u16,
    high: u16,
}

impl PortRange {
    pub fn new(low: u16, high: u16) -> Result<Self, String> {
        if low == 0 {
            return Err(format!("low port {low} is below 1"));
        }
        if low > high {
            return Err(format!("low port {low} is above high port {high}"));
        }
        Ok(PortRange { low, high })
    }

    pub fn low(self) -> u16 {
        self.low
    }

    pub fn high(self) -> u16 {
        self.high
    }

    /// Number of ports in the range.
    pub fn len(self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }

    pub fn is_empty(self) -> bool {
        false
    }

    pub fn contains(self, port: u16) -> bool {
        self.low <= port && port <= self.high
    }

    pub fn contains_range(self, other: PortRange) -> bool {
        self.low <= other.low && other.high <= self.high
    }

    /// `connect()` scans ports of `low`'s parity first and drops one candidate
    /// when the count is odd; with ends of the same parity one port per
    /// destination can become unreachable (`__inet_hash_connect`,
    /// net/ipv4/inet_hashtables.c; kernel.md §1.5). The kernel logs
    /// "prefer different parity for start/end values" for such a write.
    pub fn has_same_parity(self) -> bool {
        self.low % 2 == self.high % 2
    }

    /// Parses the kernel's output (`"low\thigh\n"`) or any whitespace-separated pair.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split_whitespace();
        let (Some(low), Some(high), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "expected two port numbers \"LOW HIGH\", found {:?}",
                text.trim()
            ));
        };
        let low = parse_port(low)?;
        let high = parse_port(high)?;
        PortRange::new(low, high)
    }

    /// The value to write to `/proc/sys/net/ipv4/ip_local_port_range`: plain
    /// decimal without leading zeros (a leading 0 is read as octal), one line
    /// (kernel.md §1.2).
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

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("{text:?} is not a port number (0-65535)"))
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
        (0..=PORT_MAX).filter(|p| self.contains(*p))
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

    /// Maximal runs of consecutive ports.
    pub fn runs(&self) -> Vec<PortRange> {
        let mut runs = Vec::new();
        let mut start: Option<u16> = None;
        let mut prev = 0u16;
        for p in self.iter() {
            match start {
                Some(_) if p == prev + 1 => {}
                Some(s) => {
                    runs.push(PortRange { low: s, high: prev });
                    start = Some(p);
                }
                None => start = Some(p),
            }
            prev = p;
        }
        if let Some(s) = start {
            runs.push(PortRange { low: s, high: prev });
        }
        runs
    }

    /// Parses the syntax of `ip_local_reserved_ports`: a comma-separated list
    /// of `N` or `A-B` with `A <= B`, no spaces inside; empty means no ports
    /// (kernel.md §2.1). Port 0 is accepted because the kernel accepts it.
    pub fn parse(text: &str) -> Result<Self, String> {
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
                        return Err(format!("reserved range {item:?} is written backwards"));
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
        for (i, run) in self.runs().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if run.low == run.high {
                write!(f, "{}", run.low)?;
            } else {
                write!(f, "{}-{}", run.low, run.high)?;
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

/// TCP states as `/proc/net/tcp` prints them (include/net/tcp_states.h).
/// TIME_WAIT minisockets print their substate (06, or 05 for an orphaned
/// FIN_WAIT2); request sockets print 03.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
    /// Bound but neither listening nor connected; only netlink on Linux >= 6.8 shows it.
    BoundInactive = 13,
}

impl TcpState {
    pub const ALL: [TcpState; 13] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];

    pub fn from_code(code: u8) -> Option<TcpState> {
        TcpState::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }

    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// The name `ss` prints for the state.
    pub fn ss_name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTAB",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv | TcpState::NewSynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "UNCONN",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::BoundInactive => "BOUND-INACTIVE",
        }
    }

    /// The name used in portd's JSON and reports.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
            TcpState::BoundInactive => "BOUND_INACTIVE",
        }
    }
}

/// `net.ipv4.tcp_tw_reuse`: whether `connect()` may take over a TIME_WAIT
/// 4-tuple (`tcp_twsk_unique`, net/ipv4/tcp_ipv4.c). 2 (the default) allows it
/// for loopback traffic only. Takeover also needs TCP timestamps, and an
/// orphaned FIN_WAIT2 (state 05) is never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TwReuse {
    Off,
    On,
    LoopbackOnly,
}

impl TwReuse {
    pub fn from_sysctl(value: i64) -> TwReuse {
        match value {
            0 => TwReuse::Off,
            1 => TwReuse::On,
            _ => TwReuse::LoopbackOnly,
        }
    }

    /// True if a TIME_WAIT socket between these addresses may be reused by
    /// `connect()`, so it does not hold its 4-tuple. The loopback test looks at
    /// either end, as `tcp_twsk_unique` does.
    pub fn reusable(self, timestamps: bool, local: IpAddr, remote: IpAddr) -> bool {
        if !timestamps {
            return false;
        }
        match self {
            TwReuse::Off => false,
            TwReuse::On => true,
            TwReuse::LoopbackOnly => local.is_loopback() || remote.is_loopback(),
        }
    }
}

/// The slowdown mark: once half of the ports towards one destination are in
/// use, every further `connect()` to it walks the whole first (same-parity)
/// pass first, about 10x slower (kernel.md §1.5).
pub const CONNECT_SLOWDOWN_FRACTION: f64 = 0.5;

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn tcp_state_codes_match_tcp_states_h() {
        assert_eq!(TcpState::from_code(1), Some(TcpState::Established));
        assert_eq!(TcpState::from_code(6), Some(TcpState::TimeWait));
        assert_eq!(TcpState::from_code(10), Some(TcpState::Listen));
        assert_eq!(TcpState::from_code(0), None);
        assert_eq!(TcpState::from_code(14), None);
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
                    proptest::prop_assert!(!e.is_empty());
                }
                match PortSet::parse(&text) {
                    Ok(set) => proptest::prop_assert_eq!(PortSet::parse(&set.to_string()).unwrap(), set),
                    Err(e) => proptest::prop_assert!(e.contains('"'), "{}", e),
                }
            }
        }

        #[test]
        fn port_set_display_parses_back(ports in proptest::collection::vec(0u16..=PORT_MAX, 0..200)) {
            let mut s = PortSet::new();
            for p in &ports { s.insert(*p); }
            let back = PortSet::parse(&s.to_string()).unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }
}
