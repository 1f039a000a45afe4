//! Kernel facts about ephemeral ports, each in one place with its source.
//!
//! Everything here is pure: parsing and formatting of the sysctl values and the
//! rules the kernel applies to them. Reading and writing the files is done
//! elsewhere (`census::settings`, the actuator).

use std::net::IpAddr;

use serde::Serialize;

/// Highest port number (`ip_local_port_range_max`, net/ipv4/sysctl_net_ipv4.c).
pub const PORT_MAX: u16 = crate::base::ports::Port::MAX.get();

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
/// pass first, about 10x slower (docs/kernel.md §1.5).
pub const CONNECT_SLOWDOWN_FRACTION: f64 = 0.5;

/// A process as `/proc/PID/stat` shows it (`do_task_stat()`, fs/proc/array.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 22: clock ticks after boot.
    pub start_time: u64,
    /// A zombie: exited, not yet reaped.
    pub zombie: bool,
}

/// The fields after the command, which is in parentheses and may hold
/// spaces and parentheses itself: state is the first, start time the 20th.
pub fn parse_proc_stat(stat: &[u8]) -> Option<ProcStat> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    Some(ProcStat {
        start_time: fields.get(19)?.parse().ok()?,
        zombie: *fields.first()? == "Z",
    })
}

/// The last pid handed out in the reader's PID namespace: the fifth field
/// of `/proc/loadavg` (`idr_get_cursor() - 1`, fs/proc/loadavg.c). It moves
/// with every process and thread created in that namespace (from the
/// host's: anywhere).
pub fn loadavg_last_pid(loadavg: &str) -> Option<u32> {
    loadavg.split_whitespace().nth(4)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_state_codes_match_tcp_states_h() {
        assert_eq!(TcpState::from_code(1), Some(TcpState::Established));
        assert_eq!(TcpState::from_code(6), Some(TcpState::TimeWait));
        assert_eq!(TcpState::from_code(10), Some(TcpState::Listen));
        assert_eq!(TcpState::from_code(0), None);
        assert_eq!(TcpState::from_code(14), None);
    }

    #[test]
    fn the_last_pid_is_the_fifth_field_of_loadavg() {
        assert_eq!(
            loadavg_last_pid("0.52 0.61 0.70 2/431 123456\n"),
            Some(123456)
        );
        assert_eq!(loadavg_last_pid("0.52 0.61 0.70 2/431\n"), None);
        let live = std::fs::read_to_string("/proc/loadavg").unwrap();
        assert!(loadavg_last_pid(&live).is_some(), "{live}");
    }
}
