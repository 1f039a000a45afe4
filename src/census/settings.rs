//! The kernel settings that decide capacity, read from `/proc/sys`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::reader::{Fresh, ProcRead};
use crate::host::Host;
use crate::kernel::{self, DEFAULT_UNPRIVILEGED_PORT_START, PortRange, PortSet, TwReuse};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelSettings {
    pub port_range: PortRange,
    pub reserved_ports: PortSet,
    pub unprivileged_port_start: u16,
    pub tcp_tw_reuse: TwReuse,
    pub tcp_timestamps: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl KernelSettings {
    pub fn read(host: &Host) -> Result<Self, SettingsError> {
        Self::read_with(host, &mut Fresh)
    }

    /// As [`KernelSettings::read`], through `reader` (the daemon keeps the
    /// files open).
    pub fn read_with(host: &Host, reader: &mut dyn ProcRead) -> Result<Self, SettingsError> {
        let range_path = host.proc_sys(kernel::KEY_PORT_RANGE);
        let port_range = PortRange::parse(&read(reader, &range_path)?).map_err(|message| {
            SettingsError::Invalid {
                path: range_path.clone(),
                message,
            }
        })?;
        let reserved_path = host.proc_sys(kernel::KEY_RESERVED_PORTS);
        let reserved_ports = PortSet::parse(&read(reader, &reserved_path)?).map_err(|message| {
            SettingsError::Invalid {
                path: reserved_path.clone(),
                message,
            }
        })?;
        // Older kernels lack these; their behaviour then is the default's.
        let unprivileged_port_start = read_optional_number(
            reader,
            &host.proc_sys(kernel::KEY_UNPRIVILEGED_PORT_START),
            0..=i64::from(kernel::PORT_MAX),
        )?
        .map_or(DEFAULT_UNPRIVILEGED_PORT_START, |v| v as u16);
        let tcp_tw_reuse =
            read_optional_number(reader, &host.proc_sys(kernel::KEY_TCP_TW_REUSE), 0..=2)?
                .map_or(TwReuse::LoopbackOnly, TwReuse::from_sysctl);
        let tcp_timestamps =
            read_optional_number(reader, &host.proc_sys(kernel::KEY_TCP_TIMESTAMPS), 0..=2)?
                .is_none_or(|v| v != 0);
        Ok(KernelSettings {
            port_range,
            reserved_ports,
            unprivileged_port_start,
            tcp_tw_reuse,
            tcp_timestamps,
        })
    }
}

fn read(reader: &mut dyn ProcRead, path: &Path) -> Result<String, SettingsError> {
    reader
        .read_text(path)
        .map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })
}

fn read_optional_number(
    reader: &mut dyn ProcRead,
    path: &Path,
    allowed: std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, SettingsError> {
    let text = match reader.read_text(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SettingsError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    match text.trim().parse::<i64>() {
        Ok(v) if allowed.contains(&v) => Ok(Some(v)),
        _ => Err(SettingsError::Invalid {
            path: path.to_owned(),
            message: format!(
                "expected a number from {} to {}, found {:?}",
                allowed.start(),
                allowed.end(),
                text.trim()
            ),
        }),
    }
}
