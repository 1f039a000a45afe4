//! O(1) socket totals from `/proc/net/sockstat{,6}` and `Tcp: ActiveOpens`
//! from `/proc/net/snmp` (docs/kernel.md §4.4). Per network namespace.

use std::path::Path;

use super::reader::ProcRead;
use crate::base::host::Host;

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
    let path = host.proc("net/sockstat");
    let v4 = read(reader, &path)?;
    let at = |r: Result<u64, Bad>| r.map_err(|bad| bad_data(&path, bad));
    t.tcp_inuse += at(field(&v4, "TCP:", "inuse"))?;
    t.tcp_tw += at(field(&v4, "TCP:", "tw"))?;
    t.udp_inuse += at(field(&v4, "UDP:", "inuse"))?;
    // A kernel without IPv6 has no sockstat6.
    let path = host.proc("net/sockstat6");
    let v6 = match read(reader, &path) {
        Ok(v6) => v6,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(t),
        Err(e) => return Err(e),
    };
    let at = |r: Result<u64, Bad>| r.map_err(|bad| bad_data(&path, bad));
    t.tcp_inuse += at(field(&v6, "TCP6:", "inuse"))?;
    t.udp_inuse += at(field(&v6, "UDP6:", "inuse"))?;
    Ok(t)
}

/// `Tcp: ActiveOpens` (connect() calls that reached SYN_SENT, IPv4 and IPv6).
pub fn read_active_opens(host: &Host, reader: &mut dyn ProcRead) -> std::io::Result<u64> {
    let path = host.proc("net/snmp");
    let text = read(reader, &path)?;
    active_opens(&text).map_err(|bad| bad_data(&path, bad))
}

/// The file's text; an error names the file.
fn read(reader: &mut dyn ProcRead, path: &Path) -> std::io::Result<String> {
    reader
        .read_text(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// What is wrong, and on which line (1-based) if the fault has one.
type Bad = (Option<usize>, String);

fn bad_data(path: &Path, (line, message): Bad) -> std::io::Error {
    let place = match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    };
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{place}: {message}"),
    )
}

/// The counter `name` of the line starting with `prefix`
/// (`TCP: inuse 3 orphan 0 tw 7 ...`, `sockstat_seq_show()`).
fn field(text: &str, prefix: &str, name: &str) -> Result<u64, Bad> {
    let (index, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with(prefix))
        .ok_or_else(|| (None, format!("no {prefix:?} line")))?;
    let at = Some(index + 1);
    let mut it = line.split_ascii_whitespace().skip(1);
    while let Some(k) = it.next() {
        let v = it.next();
        if k == name {
            return v
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| (at, format!("{prefix} {name} is {v:?}, expected a count")));
        }
    }
    Err((at, format!("no {name:?} counter in the {prefix} line")))
}

/// `Tcp: ActiveOpens` from the `Tcp:` names line and the values line after
/// it (`snmp_seq_show_tcp_udp()`).
fn active_opens(snmp: &str) -> Result<u64, Bad> {
    let mut tcp = snmp
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("Tcp:"));
    let (names_index, names) = tcp
        .next()
        .ok_or_else(|| (None, "no \"Tcp:\" lines".to_string()))?;
    let (values_index, values) = tcp.next().ok_or_else(|| {
        (
            Some(names_index + 1),
            "no \"Tcp:\" values line after these names".to_string(),
        )
    })?;
    let idx = names
        .split_ascii_whitespace()
        .position(|n| n == "ActiveOpens")
        .ok_or_else(|| {
            (
                Some(names_index + 1),
                "no \"ActiveOpens\" among the Tcp: names".to_string(),
            )
        })?;
    let value = values.split_ascii_whitespace().nth(idx);
    value.and_then(|v| v.parse().ok()).ok_or_else(|| {
        (
            Some(values_index + 1),
            format!("Tcp: ActiveOpens is {value:?}, expected a count"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::census::reader::Fresh;

    #[test]
    fn parses_sockstat_and_snmp() {
        let s = "sockets: used 5\nTCP: inuse 3 orphan 0 tw 7 alloc 10 mem 1\nUDP: inuse 2 mem 0\n";
        assert_eq!(field(s, "TCP:", "inuse"), Ok(3));
        assert_eq!(field(s, "TCP:", "tw"), Ok(7));
        assert_eq!(field(s, "UDP:", "inuse"), Ok(2));
        let snmp = "Tcp: RtoAlgorithm RtoMin ActiveOpens PassiveOpens\nTcp: 1 200 42 7\n";
        assert_eq!(active_opens(snmp), Ok(42));
    }

    #[test]
    fn a_missing_or_bad_counter_is_an_error_naming_the_file_and_line() {
        // Before, a missing counter read as 0: a bound of no sockets at all.
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        let net = dir.path().join("proc/net");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(
            net.join("sockstat"),
            "sockets: used 5\nTCP: inuse 3 orphan 0\n",
        )
        .unwrap();
        let err = read_totals(&host, &mut Fresh).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}:2: no \"tw\" counter in the TCP: line",
                net.join("sockstat").display()
            )
        );
        std::fs::write(
            net.join("sockstat"),
            "TCP: inuse 3 orphan 0 tw 7\nUDP: inuse 2\n",
        )
        .unwrap();
        std::fs::write(net.join("sockstat6"), "TCP6: inuse x\n").unwrap();
        let err = read_totals(&host, &mut Fresh).unwrap_err().to_string();
        assert!(
            err.ends_with("sockstat6:1: TCP6: inuse is Some(\"x\"), expected a count"),
            "{err}"
        );
        std::fs::remove_file(net.join("sockstat6")).unwrap();
        assert_eq!(
            read_totals(&host, &mut Fresh).unwrap(),
            Totals {
                tcp_inuse: 3,
                tcp_tw: 7,
                udp_inuse: 2
            }
        );
        std::fs::write(net.join("snmp"), "Ip: 1\nTcp: RtoMin ActiveOpens\nTcp: 1\n").unwrap();
        let err = read_active_opens(&host, &mut Fresh)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("snmp:3: Tcp: ActiveOpens is None, expected a count"),
            "{err}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary text never panics, and every error names the file.
        #[test]
        fn arbitrary_sockstat_and_snmp_never_panic(
            text in proptest::string::bytes_regex("(?s-u).{0,300}").unwrap(),
            lines in proptest::collection::vec("(TCP6?|UDP6?|Tcp): ?[a-zA-Z ]{0,12}[0-9 x-]{0,8}", 0..6),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let host = Host::new(dir.path());
            let net = dir.path().join("proc/net");
            std::fs::create_dir_all(&net).unwrap();
            for (i, bytes) in [text.clone(), lines.join("\n").into_bytes()].into_iter().enumerate() {
                for name in ["sockstat", "sockstat6", "snmp"] {
                    std::fs::write(net.join(name), &bytes).unwrap();
                }
                for err in [
                    read_totals(&host, &mut Fresh).err(),
                    read_active_opens(&host, &mut Fresh).err(),
                ].into_iter().flatten() {
                    let err = err.to_string();
                    proptest::prop_assert!(
                        err.starts_with(&net.display().to_string()),
                        "case {}: {}", i, err
                    );
                }
            }
        }
    }
}
