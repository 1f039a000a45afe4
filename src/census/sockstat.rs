//! O(1) socket totals from `/proc/net/sockstat{,6}` and `Tcp: ActiveOpens`
//! from `/proc/net/snmp` (kernel.md §4.4). Per network namespace.

use std::path::Path;

use super::reader::ProcRead;
use crate::host::Host;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// IPv4 + IPv6 TCP sockets in the listen and established hashes.
    pub tcp_inuse: u64,
    /// TIME_WAIT and orphaned FIN_WAIT2 minisockets, IPv4 and IPv6.
    pub tcp_tw: u64,
    /// IPv4 + IPv6 UDP sockets.
    pub udp_inuse: u64,
}

impl Totals {
    /// No destination and no TCP pool can hold more ports than this.
    pub fn tcp_bound(&self) -> u64 {
        self.tcp_inuse + self.tcp_tw
    }
}

pub fn read_totals(host: &Host, reader: &mut dyn ProcRead) -> std::io::Result<Totals> {
    let mut t = Totals::default();
    let v4 = reader.read_text(&host.proc("net/sockstat"))?;
    t.tcp_inuse += field(&v4, "TCP:", "inuse");
    t.tcp_tw += field(&v4, "TCP:", "tw");
    t.udp_inuse += field(&v4, "UDP:", "inuse");
    if let Ok(v6) = reader.read_text(&host.proc("net/sockstat6")) {
        t.tcp_inuse += field(&v6, "TCP6:", "inuse");
        t.udp_inuse += field(&v6, "UDP6:", "inuse");
    }
    Ok(t)
}

/// `Tcp: ActiveOpens` (connect() calls that reached SYN_SENT, IPv4 and IPv6).
pub fn read_active_opens(host: &Host, reader: &mut dyn ProcRead) -> std::io::Result<u64> {
    let path = host.proc("net/snmp");
    let text = reader.read_text(&path)?;
    active_opens(&text).ok_or_else(|| bad_data(&path))
}

fn bad_data(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: no \"Tcp: ActiveOpens\" counter", path.display()),
    )
}

fn field(text: &str, prefix: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| {
            let mut it = l.split_ascii_whitespace().skip(1);
            while let Some(k) = it.next() {
                let v = it.next()?;
                if k == name {
                    return v.parse().ok();
                }
            }
            None
        })
        .unwrap_or(0)
}

fn active_opens(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let idx = names
        .split_ascii_whitespace()
        .position(|n| n == "ActiveOpens")?;
    values.split_ascii_whitespace().nth(idx)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sockstat_and_snmp() {
        let s = "sockets: used 5\nTCP: inuse 3 orphan 0 tw 7 alloc 10 mem 1\nUDP: inuse 2 mem 0\n";
        assert_eq!(field(s, "TCP:", "inuse"), 3);
        assert_eq!(field(s, "TCP:", "tw"), 7);
        assert_eq!(field(s, "UDP:", "inuse"), 2);
        let snmp = "Tcp: RtoAlgorithm RtoMin ActiveOpens PassiveOpens\nTcp: 1 200 42 7\n";
        assert_eq!(active_opens(snmp), Some(42));
    }
}
