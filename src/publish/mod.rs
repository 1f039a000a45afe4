//! Every channel portd speaks on: journal events (one MESSAGE_ID each), the
//! Prometheus textfile, the live view `portd status` reads, the service
//! manager's STATUS and watchdog, and where log lines go.
//!
//! May import `base`, `policy`, `observe` and `judge`.

pub mod events;
pub(crate) mod live;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod notify;
