//! The poll timer: a timerfd the event loop waits on like any other fd,
//! so an idle poll wakes the daemon once. A tokio timer would wake it
//! twice: its wheel files a deadline one second away in a 64 ms slot, and
//! the loop wakes at the start of that slot to file it again, then at the
//! deadline. Ticks keep tokio's `MissedTickBehavior::Delay`: one period
//! after the last deadline, or one period after a tick seen late. The
//! timerfd is periodic: a tick on time sets nothing, only one seen late
//! (or a new period) sets the timer again.

use std::fs::File;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A tick seen later than this after its deadline starts the period anew
/// (tokio's interval allows the same).
const LATE: Duration = Duration::from_millis(5);

pub(super) struct PollTimer {
    fd: AsyncFd<File>,
    period: Duration,
    deadline: Instant,
    /// The next tick is due now (`reset_immediately`), without the fd.
    now: bool,
    /// The timerfd is set to the deadline; if setting it failed, tokio's
    /// timer keeps the deadline instead.
    armed: bool,
}

impl PollTimer {
    /// The first tick at once, the next one period later.
    pub(super) fn new(period: Duration) -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: the `File` owns the timerfd and is neither closed nor
        // replaced while the `AsyncFd` holds it (its `as_raw_fd` is fixed).
        let fd = unsafe { AsyncFd::register_with_interest(File::from(fd), Interest::READABLE) }
            .map_err(io::Error::from)?;
        let mut timer = PollTimer {
            fd,
            period,
            deadline: Instant::now(),
            now: false,
            armed: false,
        };
        timer.restart(period);
        timer.reset_immediately();
        Ok(timer)
    }

    pub(super) fn period(&self) -> Duration {
        self.period
    }

    /// A new period; the next tick one period from now.
    pub(super) fn restart(&mut self, period: Duration) {
        self.period = period;
        self.deadline = Instant::now() + period;
        self.now = false;
        self.arm();
    }

    /// The next tick now; the ones after it a period apart from it.
    pub(super) fn reset_immediately(&mut self) {
        self.now = true;
    }

    /// Waits for the next tick. Cancel-safe: the only wait is for the fd,
    /// and a tick is taken (the fd read, the next deadline set) without
    /// another.
    pub(super) async fn tick(&mut self) {
        if !std::mem::take(&mut self.now) {
            let fired = if self.armed {
                self.expired().await
            } else {
                Err(io::Error::other("not set"))
            };
            if let Err(e) = fired {
                // Not seen on Linux; tokio's timer keeps the deadline then.
                tracing::debug!("poll timer: {e}");
                tokio::time::sleep_until(self.deadline.into()).await;
            }
        }
        let now = Instant::now();
        if now > self.deadline + LATE || now < self.deadline || !self.armed {
            self.deadline = now + self.period;
            self.arm();
        } else {
            // On time: the timerfd, periodic, is set for the next deadline
            // already (one system call less a poll).
            self.deadline += self.period;
        }
    }

    /// Until the timerfd has expired (its count read, so it is quiet again).
    /// The readiness is cleared with the read: the timerfd is quiet until
    /// its next expiry, which the event loop hears as a new event (tokio
    /// clears only the readiness this wait saw), so the next wait does not
    /// first read the fd to learn it is empty (one system call a poll).
    async fn expired(&self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let mut count = [0u8; 8];
            match ready.try_io(|fd| fd.get_ref().read(&mut count)) {
                Ok(Ok(_)) => {
                    ready.clear_ready();
                    return Ok(());
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sets the timerfd to expire at the deadline and every period after
    /// it; setting it clears an expiry not yet read.
    fn arm(&mut self) {
        // Zero would disarm it: a deadline passed expires in 1 ns.
        let wait = self
            .deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: i64::try_from(self.period.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: self.period.subsec_nanos().into(),
            },
            it_value: Timespec {
                tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: wait.subsec_nanos().into(),
            },
        };
        self.armed = timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec).is_ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(150);

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    /// Lower bounds only: a loaded machine may make any tick late, never
    /// early.
    #[test]
    fn ticks_come_a_period_apart_and_a_late_one_starts_the_period_anew() {
        runtime().block_on(async {
            let mut timer = PollTimer::new(PERIOD).expect("a timerfd");
            let start = Instant::now();
            timer.tick().await;
            assert!(start.elapsed() < PERIOD, "the first tick comes at once");
            for _ in 0..4 {
                timer.tick().await;
            }
            assert!(start.elapsed() >= PERIOD * 4, "{:?}", start.elapsed());
            // Seen three periods late (the loop was busy): one tick at once,
            // then one period from it, not the missed ones in a burst
            // (tokio's `MissedTickBehavior::Delay`).
            std::thread::sleep(PERIOD * 3);
            let late = Instant::now();
            timer.tick().await;
            assert!(late.elapsed() < PERIOD, "the late tick comes at once");
            let after = Instant::now();
            timer.tick().await;
            assert!(
                after.elapsed() >= PERIOD - Duration::from_millis(5),
                "a period after the late tick: {:?}",
                after.elapsed()
            );
            // reset_immediately: a tick now, the next a period later.
            timer.reset_immediately();
            let now = Instant::now();
            timer.tick().await;
            timer.tick().await;
            assert!(now.elapsed() >= PERIOD - Duration::from_millis(5));
        });
    }
}
