//! The quiet bound of a namespace: from its O(1) counters alone, proof that
//! no destination or pool can be at the warning level, so that no census is
//! needed (docs/DESIGN.md, "Other network namespaces"). Used by the daemon's
//! watch over the other namespaces and by `portd status` alike.

use serde::Serialize;

use crate::base::ports::Ratio;
use crate::judge::level::Level;
use crate::observe::census::KernelSettings;
use crate::observe::census::sockstat::Totals;
use crate::policy::Thresholds;

/// At most `bound` of at least `capacity` ports towards any destination,
/// from the namespace's counters alone.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Quiet {
    pub bound: u64,
    pub capacity: u64,
    pub usage: Ratio,
}

/// `Some` when the counters prove every destination and pool below the
/// warning level. The capacity is a lower bound: the range minus the
/// reserved ports minus every TCP socket (each listener in the range is
/// one of them).
pub fn quiet(settings: &KernelSettings, totals: &Totals, thresholds: &Thresholds) -> Option<Quiet> {
    let range = settings.port_range;
    let poolable =
        u64::from(range.len()).saturating_sub(u64::from(settings.reserved_ports.count_in(range)));
    let capacity = poolable.saturating_sub(totals.tcp_inuse);
    let bound = totals.tcp_bound().max(totals.udp_inuse);
    let usage = Ratio::of(bound, capacity);
    let ok =
        capacity > 0 && Level::of(usage, thresholds.warning(), thresholds.critical()) == Level::Ok;
    ok.then_some(Quiet {
        bound,
        capacity,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::observe::census::settings::for_tests as settings;

    #[test]
    fn quiet_only_when_the_counters_prove_it() {
        let t = crate::policy::Policy::default().thresholds;
        let totals = |inuse, tw, udp| Totals {
            tcp_inuse: inuse,
            tcp_tw: tw,
            udp_inuse: udp,
        };
        // 100 ports; 10 TCP sockets leave at least 90: 20 of 90 is 22 %.
        let s = settings(40000, 40099, &[]);
        assert_eq!(
            quiet(&s, &totals(10, 10, 0), &t).map(|q| (q.bound, q.capacity)),
            Some((20, 90))
        );
        // A full tiny range is never quiet, however few UDP sockets.
        assert_eq!(quiet(&s, &totals(60, 30, 0), &t), None);
        assert_eq!(quiet(&s, &totals(0, 0, 95), &t), None);
        // Reserved ports shrink the capacity.
        let r: Vec<u16> = (40000..40080).collect();
        assert_eq!(
            quiet(&settings(40000, 40099, &r), &totals(5, 5, 0), &t),
            None
        );
        // No capacity at all: never quiet.
        let all: Vec<u16> = (40000..=40099).collect();
        assert_eq!(
            quiet(&settings(40000, 40099, &all), &totals(0, 0, 0), &t),
            None
        );
    }
}
