//! SIGHUP: the policy file is read and checked on the blocking pool (a
//! hostile file can take long), then the new policy takes effect, or the
//! old one stays with the file's errors in the journal.

use tokio::task::{JoinError, JoinHandle};

use super::Daemon;
use super::{journal, report};
use crate::policy::{self, Policy};
use crate::publish::notify;

/// A policy file read and checked on the blocking pool (a reload), with
/// its digest taken just before (`publish::live::policy_digest`).
pub(super) type LoadedPolicy = (
    Option<String>,
    Result<(Policy, bool), policy::file::PolicyError>,
);

impl Daemon {
    /// SIGHUP: `RELOADING=1`, then the policy file is read and checked on
    /// the blocking pool; [`Daemon::reload`] takes the result.
    pub(super) fn start_reload(&self) -> JoinHandle<LoadedPolicy> {
        notify::reloading();
        let config = self.config.clone();
        let required = self.config_required;
        tokio::task::spawn_blocking(move || {
            let digest = crate::publish::live::policy_digest(&config);
            (digest, policy::file::load_configured(&config, required))
        })
    }

    /// The new policy or (if invalid) the old one with the file's
    /// `PATH:LINE:COL` errors in the journal, then `READY=1`.
    pub(super) fn reload(&mut self, loaded: Result<LoadedPolicy, JoinError>) {
        let (digest, loaded) = loaded.unwrap_or_else(|e| {
            let why = format!("checking the policy failed: {e}");
            (
                None,
                Err(policy::file::PolicyError::whole_file(&self.config, why)),
            )
        });
        match loaded {
            Ok((policy, _)) => {
                self.policy = policy;
                self.policy_digest = digest;
                let cleared = self.state.clear_yields();
                if cleared {
                    self.save_state();
                }
                self.report.blocked.clear();
                journal::reloaded(&self.config, &self.authority(), cleared);
            }
            Err(e) => journal::rejected(&self.config, &e),
        }
        let line = self.last.as_ref().map_or_else(
            || "reloaded".to_string(),
            |l| report::status_line(&l.usage, None, &self.authority(), &l.assessment, None),
        );
        if self.report.ready {
            notify::ready(&line);
        }
    }
}
