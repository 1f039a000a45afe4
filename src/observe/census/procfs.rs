//! The procfs socket source: `/proc/net/{tcp,tcp6,udp,udp6}` and, when the
//! kernel has SCTP, `/proc/net/sctp/{eps,assocs}`.
//!
//! A streaming reader of its own rather than `procfs::net::tcp()`: that one
//! returns a `Vec` of entries and allocates a `String` per line (about 490 ns
//! a line, 86 MiB at 1M sockets, measured), while this one reuses one
//! line buffer and hands each socket to the visitor as it is parsed.
//!
//! The kernel walks the whole established hash to produce any of the TCP
//! tables, also to find that `tcp6` has no row left when the host has
//! IPv4 sockets only, and once more for the `read()` that returns end of file
//! (`tcp_seq_start()` cannot resume past the end; measured: docs/benchmarks.md).
//! So a listeners scan that reaches the end of a small table keeps its bytes
//! for the next full scan instead of making the kernel walk it twice again.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::{CensusError, Proto, ScanScope, Socket, SocketSource, UNSPECIFIED_V6, normalise};
use crate::base::fsutil;
use crate::base::host::Host;
use crate::base::kernel::TcpState;

pub struct ProcfsSource {
    net: PathBuf,
    /// `tcp` and `tcp6` as a listeners scan read them to the end, taken by
    /// the next full scan.
    read_whole: [RefCell<Option<Vec<u8>>>; 2],
}

/// A table up to this size (about 400 rows) is read to its end by a
/// listeners scan and kept for the full scan that follows.
const WHOLE_TABLE_LIMIT: usize = 64 * 1024;

impl ProcfsSource {
    pub fn new(host: &Host) -> Self {
        ProcfsSource {
            net: host.proc("net"),
            read_whole: Default::default(),
        }
    }
}

impl SocketSource for ProcfsSource {
    fn name(&self) -> &'static str {
        "procfs"
    }

    fn sees_bound_only(&self) -> bool {
        false
    }

    fn scan(
        &self,
        scope: ScanScope<'_>,
        visit: &mut dyn FnMut(&Socket),
    ) -> Result<(), CensusError> {
        // A kernel built or booted without IPv6 has no tcp6/udp6; tcp/udp always exist.
        let tcp = [("tcp", true), ("tcp6", false)]
            .into_iter()
            .zip(&self.read_whole);
        let ports = match scope {
            ScanScope::Listeners => {
                for ((file, required), whole) in tcp {
                    scan_listeners(&self.net.join(file), required, whole, visit)?;
                }
                return Ok(());
            }
            ScanScope::Ports(ports) => ports,
        };
        // Every row is parsed, so a malformed one is reported wherever it is.
        let mut visit = |s: &Socket| {
            if ports.contains(s.local_port) {
                visit(s)
            }
        };
        for ((file, required), whole) in tcp {
            let path = self.net.join(file);
            match whole.take() {
                Some(bytes) => scan_inet_rows(&path, &bytes[..], Proto::Tcp, &mut visit)?,
                None => scan_inet_table(&path, Proto::Tcp, required, &mut visit)?,
            }
        }
        for (file, proto, required) in [("udp", Proto::Udp, true), ("udp6", Proto::Udp, false)] {
            scan_inet_table(&self.net.join(file), proto, required, &mut visit)?;
        }
        scan_sctp(&self.net.join("sctp"), &mut visit)
    }
}

/// Opens a table; a FIFO or device in its place (a hostile `--root`) is
/// refused without blocking, as real procfs tables are regular files.
fn open(path: &Path, required: bool) -> Result<Option<BufReader<File>>, CensusError> {
    match fsutil::open_regular(path) {
        Ok(f) => Ok(Some(BufReader::with_capacity(64 * 1024, f))),
        Err(e) if e.kind() == ErrorKind::NotFound && !required => Ok(None),
        Err(source) => Err(CensusError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// How [`for_each_row`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    EndOfFile,
    Stopped,
}

/// Reads lines into one reusable buffer, numbering them from 1, and calls
/// `each` for every line after the header. `each` returns false to stop.
fn for_each_row(
    path: &Path,
    mut reader: impl BufRead,
    mut each: impl FnMut(&str, usize) -> Result<bool, String>,
) -> Result<Ended, CensusError> {
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| read_error(path, source))?;
        if n == 0 {
            return Ok(Ended::EndOfFile);
        }
        line_no += 1;
        if line_no == 1 {
            continue; // header
        }
        let malformed = |message: String| CensusError::Malformed {
            path: path.to_owned(),
            line: line_no,
            message,
        };
        let line = std::str::from_utf8(&buf).map_err(|_| malformed("not UTF-8 text".into()))?;
        if line.trim().is_empty() {
            continue;
        }
        match each(line, line_no) {
            Ok(true) => {}
            Ok(false) => return Ok(Ended::Stopped),
            Err(message) => return Err(malformed(message)),
        }
    }
}

fn read_error(path: &Path, source: std::io::Error) -> CensusError {
    CensusError::Read {
        path: path.to_owned(),
        source,
    }
}

/// Parses one of `/proc/net/{tcp,tcp6,udp,udp6}` (format: docs/kernel.md §4.2-4.3,
/// `get_tcp4_sock()` in net/ipv4/tcp_ipv4.c).
fn scan_inet_table(
    path: &Path,
    proto: Proto,
    required: bool,
    visit: &mut dyn FnMut(&Socket),
) -> Result<(), CensusError> {
    match open(path, required)? {
        Some(reader) => scan_inet_rows(path, reader, proto, visit),
        None => Ok(()),
    }
}

fn scan_inet_rows(
    path: &Path,
    reader: impl BufRead,
    proto: Proto,
    visit: &mut dyn FnMut(&Socket),
) -> Result<(), CensusError> {
    for_each_row(path, reader, |line, _| {
        visit(&parse_inet_row(line, proto)?);
        Ok(true)
    })
    .map(|_| ())
}

/// The listeners of a TCP table: the kernel lists the listening hash first,
/// then the established hash, so the first other row ends them. A table
/// that turns out small is read on to its end and kept in `whole`.
fn scan_listeners(
    path: &Path,
    required: bool,
    whole: &RefCell<Option<Vec<u8>>>,
    visit: &mut dyn FnMut(&Socket),
) -> Result<(), CensusError> {
    let file = match fsutil::open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound && !required => return Ok(()),
        Err(source) => return Err(read_error(path, source)),
    };
    let mut reader = BufReader::with_capacity(
        WHOLE_TABLE_LIMIT,
        Recorder {
            inner: file,
            kept: Some(Vec::new()),
        },
    );
    let ended = for_each_row(path, &mut reader, |line, _| {
        let socket = parse_inet_row(line, Proto::Tcp)?;
        if socket.state != TcpState::Listen {
            return Ok(false);
        }
        visit(&socket);
        Ok(true)
    })?;
    if ended == Ended::Stopped {
        // Read on while the table stays small.
        loop {
            let n = reader
                .fill_buf()
                .map_err(|source| read_error(path, source))?
                .len();
            if n == 0 || reader.get_ref().kept.is_none() {
                break;
            }
            reader.consume(n);
        }
    }
    *whole.borrow_mut() = reader.into_inner().kept;
    Ok(())
}

/// Keeps a copy of what it reads until end of file, or gives up (`kept`
/// becomes `None`) past [`WHOLE_TABLE_LIMIT`].
struct Recorder {
    inner: File,
    kept: Option<Vec<u8>>,
}

impl Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(kept) = &mut self.kept {
            if kept.len() + n > WHOLE_TABLE_LIMIT {
                self.kept = None;
            } else {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        Ok(n)
    }
}

/// One row: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
pub fn parse_inet_row(line: &str, proto: Proto) -> Result<Socket, String> {
    let mut fields = line.split_ascii_whitespace();
    let mut next = |name: &str| {
        fields
            .next()
            .ok_or_else(|| format!("missing the {name} column"))
    };
    let sl = next("sl")?;
    if !sl.ends_with(':') {
        return Err(format!("expected a slot number like \"0:\", found {sl:?}"));
    }
    let (local, local_port) = parse_endpoint(next("local_address")?)?;
    let (remote, remote_port) = parse_endpoint(next("rem_address")?)?;
    let st = next("st")?;
    let code = u8::from_str_radix(st, 16).map_err(|_| format!("bad state {st:?}"))?;
    let state = TcpState::from_code(code)
        .ok_or_else(|| format!("unknown state {st:?} (known: 01 to 0C)"))?;
    next("tx_queue:rx_queue")?;
    next("tr:tm->when")?;
    next("retrnsmt")?;
    let uid = next("uid")?;
    let uid = uid.parse::<u32>().map_err(|_| format!("bad uid {uid:?}"))?;
    next("timeout")?;
    let inode = next("inode")?;
    let inode = inode
        .parse::<u64>()
        .map_err(|_| format!("bad inode {inode:?}"))?;
    Ok(Socket {
        proto,
        local,
        local_port,
        remote,
        remote_port,
        state,
        uid,
        inode,
    })
}

/// `0100007F:1389` (IPv4) or 32 hex digits (IPv6) and a port in host-order
/// hex. Each 8-digit group is a `__be32` printed as a host integer, so its
/// native-endian bytes are the address bytes (docs/kernel.md §4.2).
fn parse_endpoint(text: &str) -> Result<(IpAddr, u16), String> {
    let bad = || format!("bad address {text:?} (expected HEXADDR:HEXPORT)");
    let (addr, port) = text.split_once(':').ok_or_else(bad)?;
    if port.len() != 4 {
        return Err(bad());
    }
    let port = u16::from_str_radix(port, 16).map_err(|_| bad())?;
    let word = |i: usize| -> Result<[u8; 4], String> {
        let hex = addr.get(i * 8..i * 8 + 8).ok_or_else(bad)?;
        Ok(u32::from_str_radix(hex, 16)
            .map_err(|_| bad())?
            .to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            normalise(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => return Err(bad()),
    };
    Ok((ip, port))
}

/// `/proc/net/sctp/eps` and `assocs` (format: `sctp_eps_seq_show()` and
/// `sctp_assocs_seq_show()` in net/sctp/proc.c). SCTP has its own port space
/// drawn from the same range; only the local port matters for its pool.
pub(super) fn scan_sctp(dir: &Path, visit: &mut dyn FnMut(&Socket)) -> Result<(), CensusError> {
    // eps: ENDPT SOCK STY SST HBKT LPORT UID INODE LADDRS...
    let eps = dir.join("eps");
    if let Some(reader) = open(&eps, false)? {
        for_each_row(&eps, reader, |line, _| {
            let f: Vec<&str> = line.split_ascii_whitespace().take(8).collect();
            if f.len() < 8 {
                return Err(format!(
                    "expected at least 8 columns (ENDPT SOCK STY SST HBKT LPORT UID INODE), found {}",
                    f.len()
                ));
            }
            visit(&sctp_socket(f[5], "0", f[6], f[7], TcpState::Listen)?);
            Ok(true)
        })?;
    }
    // assocs: ASSOC SOCK STY SST ST HBKT ASSOC-ID TX_QUEUE RX_QUEUE UID INODE LPORT RPORT LADDRS <-> RADDRS ...
    let assocs = dir.join("assocs");
    if let Some(reader) = open(&assocs, false)? {
        for_each_row(&assocs, reader, |line, _| {
            let f: Vec<&str> = line.split_ascii_whitespace().take(13).collect();
            if f.len() < 13 {
                return Err(format!(
                    "expected at least 13 columns (ASSOC ... INODE LPORT RPORT), found {}",
                    f.len()
                ));
            }
            visit(&sctp_socket(
                f[11],
                f[12],
                f[9],
                f[10],
                TcpState::Established,
            )?);
            Ok(true)
        })?;
    }
    Ok(())
}

fn sctp_socket(
    lport: &str,
    rport: &str,
    uid: &str,
    inode: &str,
    state: TcpState,
) -> Result<Socket, String> {
    let port = |s: &str, what: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("bad {what} {s:?} (expected 0-65535)"))
    };
    Ok(Socket {
        proto: Proto::Sctp,
        local: UNSPECIFIED_V6,
        local_port: port(lport, "LPORT")?,
        remote: UNSPECIFIED_V6,
        remote_port: port(rport, "RPORT")?,
        state,
        uid: uid.parse().map_err(|_| format!("bad UID {uid:?}"))?,
        inode: inode.parse().map_err(|_| format!("bad INODE {inode:?}"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::ports::{PortRange, PortSet};
    use proptest::prelude::Strategy as _;

    #[test]
    fn parses_a_kernel_tcp_row() {
        let s = parse_inet_row(
            "   3: 0100007F:9074 0100007F:1389 01 00000000:00000000 00:00000000 00000000     0        0 157471 2 0000000062278960 20 0 0 10 -1",
            Proto::Tcp,
        )
        .unwrap();
        assert_eq!(s.local, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((s.local_port, s.remote_port), (0x9074, 5001));
        assert_eq!(s.state, TcpState::Established);
        assert_eq!(s.inode, 157471);
    }

    #[test]
    fn v4_mapped_peers_become_ipv4() {
        let s = parse_inet_row(
            "   0: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:1389 06 00000000:00000000 03:00001766 00000000     0        0 0 3 0000000000000000",
            Proto::Tcp,
        )
        .unwrap();
        assert_eq!(s.remote, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.local, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.state, TcpState::TimeWait);
    }

    #[test]
    fn ipv6_loopback_decodes() {
        let s = parse_inet_row(
            "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0",
            Proto::Tcp,
        )
        .unwrap();
        assert_eq!(s.local, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(s.local_port, 8080);
    }

    #[test]
    fn malformed_rows_are_errors_not_panics() {
        for row in [
            "",
            "   0:",
            "   0: 0100007F:1389",
            "   0: 0100007Z:1389 00000000:0000 0A 0:0 0:0 0 0 0 1",
            "   0: 0100007F:1389 00000000:0000 FF 0:0 0:0 0 0 0 1",
            "   0: 0100007F:13890 00000000:0000 0A 0:0 0:0 0 0 0 1",
            "   0: 0100007F:1389 00000000:0000 0A 0:0 0:0 0 x 0 1",
            "0 0100007F:1389 00000000:0000 0A 0:0 0:0 0 0 0 1",
        ] {
            assert!(parse_inet_row(row, Proto::Tcp).is_err(), "{row:?}");
        }
    }

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn row(sl: usize, lport: u16, rport: u16, state: u8) -> String {
        format!(
            "{sl:4}: 0100007F:{lport:04X} 0100007F:{rport:04X} {state:02X} 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 20 4 30 10 -1\n",
            1000 + sl
        )
    }

    fn fixture(tcp6_rows: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("proc/net");
        std::fs::create_dir_all(&net).unwrap();
        let mut tcp = format!("{HEADER}{}", row(0, 5001, 0, 0x0A));
        for i in 1..1000 {
            tcp.push_str(&row(i, 40000 + i as u16, 5001, 0x01));
        }
        std::fs::write(net.join("tcp"), tcp).unwrap();
        std::fs::write(net.join("tcp6"), format!("{HEADER}{tcp6_rows}")).unwrap();
        std::fs::write(net.join("udp"), HEADER).unwrap();
        dir
    }

    fn ports(source: &ProcfsSource, scope: ScanScope<'_>) -> Vec<u16> {
        let mut ports = Vec::new();
        source
            .scan(scope, &mut |s| ports.push(s.local_port))
            .unwrap();
        ports
    }

    #[test]
    fn a_small_table_read_whole_by_the_listeners_scan_is_not_read_again() {
        let small = format!("{}{}", row(0, 8080, 0, 0x0A), row(1, 40500, 8080, 0x01));
        let dir = fixture(&small);
        let source = ProcfsSource::new(&Host::new(dir.path()));
        assert_eq!(ports(&source, ScanScope::Listeners), [5001, 8080]);
        // The full scan that follows parses what the listeners scan read.
        let tcp6 = dir.path().join("proc/net/tcp6");
        std::fs::write(&tcp6, HEADER).unwrap();
        let all = ports(&source, ScanScope::Ports(&PortSet::all()));
        assert_eq!(all.len(), 1002);
        assert_eq!(&all[1000..], [8080, 40500]);
        // Taken once: the next full scan reads the file.
        assert_eq!(
            ports(&source, ScanScope::Ports(&PortSet::all())).len(),
            1000
        );
    }

    #[test]
    fn a_port_scope_reports_only_its_ports() {
        let dir = fixture(&row(0, 50000, 8080, 0x06));
        let source = ProcfsSource::new(&Host::new(dir.path()));
        let mut some = PortSet::new();
        some.insert_range(PortRange::new(40100, 40102).unwrap());
        some.insert(50000);
        assert_eq!(
            ports(&source, ScanScope::Ports(&some)),
            [40100, 40101, 40102, 50000]
        );
        assert!(ports(&source, ScanScope::Ports(&PortSet::new())).is_empty());
    }

    #[test]
    fn a_large_table_is_read_again_by_the_full_scan() {
        let dir = fixture("");
        let source = ProcfsSource::new(&Host::new(dir.path()));
        assert_eq!(ports(&source, ScanScope::Listeners), [5001]);
        let tcp = dir.path().join("proc/net/tcp");
        std::fs::write(&tcp, format!("{HEADER}{}", row(0, 6000, 0, 0x0A))).unwrap();
        assert_eq!(ports(&source, ScanScope::Ports(&PortSet::all())), [6000]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_rows_never_panic(row in "\\PC{0,160}") {
            let _ = parse_inet_row(&row, Proto::Tcp);
        }

        /// Arbitrary bytes after the header of any table: sockets or an
        /// error naming the file and the line.
        #[test]
        fn arbitrary_tables_give_an_error_naming_file_and_line(
            rows in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
                    proptest::string::string_regex(
                        "[ 0-9]{0,4}:? ?[0-9A-F]{0,9}:?[0-9A-F]{0,5} [0-9A-F]{8}:[0-9A-F]{4} [0-9A-F]{0,3}( [0-9:xA-F]{1,8}){0,8}",
                    )
                    .unwrap()
                    .prop_map(String::into_bytes),
                ],
                0..5,
            ),
            table in 0..4usize,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let net = dir.path().join("proc/net");
            std::fs::create_dir_all(net.join("sctp")).unwrap();
            for required in ["tcp", "udp"] {
                std::fs::write(net.join(required), HEADER).unwrap();
            }
            let file = ["tcp", "udp", "sctp/eps", "sctp/assocs"][table];
            let mut bytes = HEADER.as_bytes().to_vec();
            bytes.extend(rows.join(&b'\n'));
            std::fs::write(net.join(file), &bytes).unwrap();
            let source = ProcfsSource::new(&Host::new(dir.path()));
            if let Err(e) = source.scan(ScanScope::Ports(&PortSet::all()), &mut |_| {}) {
                let e = e.to_string();
                let at = format!("{}:", net.join(file).display());
                proptest::prop_assert!(e.starts_with(&at), "{}", e);
                let line: usize = e[at.len()..].split(':').next().unwrap().parse().unwrap();
                // A generated row may itself hold newlines: count the file's lines.
                let lines = bytes.split(|&b| b == b'\n').count();
                proptest::prop_assert!((2..=lines).contains(&line), "{}", e);
            }
        }

        #[test]
        fn formatted_rows_parse_back(a in proptest::prelude::any::<u32>(), lp in proptest::prelude::any::<u16>(),
                                     b in proptest::prelude::any::<[u32; 4]>(), rp in proptest::prelude::any::<u16>(),
                                     st in 1u8..=12, inode in proptest::prelude::any::<u64>()) {
            let v4 = format!("  1: {a:08X}:{lp:04X} {a:08X}:{rp:04X} {st:02X} 00000000:00000000 00:00000000 00000000  1000 0 {inode} 1 0");
            let s = parse_inet_row(&v4, Proto::Tcp).unwrap();
            proptest::prop_assert_eq!(s.local, IpAddr::V4(Ipv4Addr::from(a.to_ne_bytes())));
            proptest::prop_assert_eq!((s.local_port, s.remote_port, s.inode, s.uid), (lp, rp, inode, 1000));
            let v6 = format!("  1: {:08X}{:08X}{:08X}{:08X}:{lp:04X} {a:08X}{a:08X}{a:08X}{a:08X}:{rp:04X} {st:02X} 0:0 0:0 0 0 0 {inode}", b[0], b[1], b[2], b[3]);
            let s = parse_inet_row(&v6, Proto::Tcp).unwrap();
            let mut bytes = [0u8; 16];
            for i in 0..4 { bytes[i*4..i*4+4].copy_from_slice(&b[i].to_ne_bytes()); }
            proptest::prop_assert_eq!(s.local, normalise(IpAddr::V6(Ipv6Addr::from(bytes))));
        }
    }
}
