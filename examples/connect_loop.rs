//! A connect-heavy loop for the failure witness's cost (benches/witness_cost.sh,
//! docs/benchmarks.md): N times socket() + connect() to a loopback listener +
//! close with RST (SO_LINGER 0, so no TIME_WAIT fills the range). Prints one
//! JSON line: the median and mean wall time of the connect() calls alone
//! and the mean of whole iterations, in ns. Run it in a private network namespace (`unshare -n`).

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let addr = listener.local_addr().expect("listener address");
    // A deeper accept queue than std's 128: a starved accept thread must not
    // make the kernel drop SYNs (a 1 s retransmit would swamp the mean).
    // SAFETY: a valid listening socket fd.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    assert_eq!(rc, 0, "listen");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let mut in_connect = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let s = TcpStream::connect(addr).expect("loopback connect");
        in_connect.push(t.elapsed());
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket fd and a properly sized linger struct.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER");
        drop(s);
    }
    let total = start.elapsed();
    let mean = in_connect.iter().sum::<Duration>().as_nanos() as f64 / f64::from(n);
    in_connect.sort();
    let median = in_connect[in_connect.len() / 2].as_nanos();
    println!(
        "{{\"connects\": {n}, \"connect_median_ns\": {median}, \"connect_mean_ns\": {mean:.0}, \"iteration_mean_ns\": {:.0}}}",
        total.as_nanos() as f64 / f64::from(n)
    );
}
