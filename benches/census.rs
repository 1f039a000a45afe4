//! Micro-benchmarks of the census on synthetic tables (`cargo bench --bench
//! census`): the procfs row parser and streaming reader, the netlink message
//! decoder, and the aggregator. No kernel involved, so they measure portd's
//! own user-space cost per socket; the macro benchmark with real sockets is
//! benches/macro.sh (docs/benchmarks.md).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use divan::{Bencher, black_box};
use portd::base::host::Host;
use portd::base::kernel::{TcpState, TwReuse};
use portd::base::ports::{PortRange, PortSet};
use portd::observe::census::netlink;
use portd::observe::census::procfs::{ProcfsSource, parse_inet_row};
use portd::observe::census::{KernelSettings, Proto, ScanScope, Socket, SocketSource};
use portd::observe::usage::{Aggregator, UsageOptions};

fn main() {
    divan::main();
}

const SIZES: [usize; 2] = [10_000, 100_000];
/// Distinct destinations of the synthetic tables (a busy proxy's upstreams).
const DESTINATIONS: u32 = 64;

/// `n` sockets: one client socket in the range per entry, spread over
/// `DESTINATIONS` destinations, an eighth of them TIME_WAIT, an eighth
/// IPv6, and a few listeners.
fn sockets(n: usize) -> Vec<Socket> {
    (0..n as u32)
        .map(|i| {
            let dest = i % DESTINATIONS;
            let (local, remote) = if i % 8 == 7 {
                (
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, dest as u16)),
                )
            } else {
                (
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    IpAddr::V4(Ipv4Addr::new(10, 1, (dest >> 8) as u8, dest as u8)),
                )
            };
            let state = match i % 8 {
                3 => TcpState::TimeWait,
                _ if i % 5000 == 0 => TcpState::Listen,
                _ => TcpState::Established,
            };
            Socket {
                proto: Proto::Tcp,
                local,
                local_port: 32768 + (i % 28000) as u16,
                remote,
                remote_port: 443,
                state,
                uid: 1000,
                inode: u64::from(100_000 + i),
            }
        })
        .collect()
}

fn settings() -> KernelSettings {
    KernelSettings {
        port_range: PortRange::new(32768, 60999).expect("a valid range"),
        reserved_ports: PortSet::new(),
        unprivileged_port_start: 1024,
        tcp_tw_reuse: TwReuse::LoopbackOnly,
        tcp_timestamps: true,
    }
}

/// `/proc/net/tcp` or `tcp6` text as `get_tcp4_sock()` prints it.
fn proc_table(sockets: &[Socket], v6: bool) -> String {
    let hex = |a: IpAddr| match a {
        IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    let mut text = String::from(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
    );
    for (i, s) in sockets
        .iter()
        .filter(|s| s.local.is_ipv6() == v6)
        .enumerate()
    {
        let row = format!(
            "{i:4}: {}:{:04X} {}:{:04X} {:02X} 00000000:00000000 00:00000000 00000000  {:4}        0 {} 1 0000000000000000 20 4 30 10 -1",
            hex(s.local),
            s.local_port,
            hex(s.remote),
            s.remote_port,
            s.state as u8,
            s.uid,
            s.inode
        );
        if v6 {
            text.push_str(&row);
        } else {
            text.push_str(&format!("{row:<149}"));
        }
        text.push('\n');
    }
    text
}

#[divan::bench(args = SIZES)]
fn procfs_parse_rows(bencher: Bencher, n: usize) {
    let text = proc_table(&sockets(n), false);
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .bench(|| {
            for line in text.lines().skip(1) {
                black_box(parse_inet_row(black_box(line), Proto::Tcp).expect("a valid row"));
            }
        });
}

/// A fixture root with synthetic tables, removed on drop.
struct Root(PathBuf);

impl Root {
    fn new(sockets: &[Socket]) -> Root {
        let dir = std::env::temp_dir().join(format!("portd-bench-{}", std::process::id()));
        let net = dir.join("proc/net");
        std::fs::create_dir_all(&net).expect("temp dir");
        std::fs::write(net.join("tcp"), proc_table(sockets, false)).expect("tcp");
        std::fs::write(net.join("tcp6"), proc_table(sockets, true)).expect("tcp6");
        let empty = proc_table(&[], false);
        std::fs::write(net.join("udp"), &empty).expect("udp");
        std::fs::write(net.join("udp6"), &empty).expect("udp6");
        Root(dir)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The streaming reader over files: read(), line splitting and parsing.
#[divan::bench(args = SIZES)]
fn procfs_scan_files(bencher: Bencher, n: usize) {
    let root = Root::new(&sockets(n));
    let host = Host::new(&root.0);
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .bench(|| {
            let mut count = 0usize;
            ProcfsSource::new(&host)
                .scan(ScanScope::Ports(&PortSet::all()), &mut |s| {
                    black_box(s);
                    count += 1;
                })
                .expect("a readable table");
            count
        });
}

/// Decoding netlink datagrams of about 32 KiB, as the kernel sends them.
#[divan::bench(args = SIZES)]
fn netlink_decode(bencher: Bencher, n: usize) {
    let all = sockets(n);
    let datagrams: Vec<Vec<u8>> = all
        .chunks(360)
        .map(|chunk| {
            let mut d = Vec::new();
            netlink::encode_for_tests(chunk, 1, &mut d);
            d
        })
        .collect();
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .bench(|| {
            let mut count = 0usize;
            for d in &datagrams {
                netlink::decode(d, 1, Proto::Tcp, &mut |s| {
                    black_box(s);
                    count += 1;
                })
                .expect("valid messages");
            }
            count
        });
}

/// The aggregator alone: per-destination counts and the pools, then the
/// report (sorting destinations).
#[divan::bench(args = SIZES)]
fn aggregate(bencher: Bencher, n: usize) {
    let all = sockets(n);
    let mut listen = PortSet::new();
    for s in all.iter().filter(|s| s.state == TcpState::Listen) {
        listen.insert(s.local_port);
    }
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .bench(|| {
            let mut agg = Aggregator::new(settings(), listen.clone());
            for s in &all {
                agg.visit(black_box(s));
            }
            agg.finish("bench", false, UsageOptions::default())
        });
}
