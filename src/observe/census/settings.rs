//! The kernel settings that decide capacity, read from `/proc/sys`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::reader::{Fresh, ProcRead};
use crate::base::host::Host;
use crate::base::kernel::{self, DEFAULT_UNPRIVILEGED_PORT_START, TwReuse};
use crate::base::ports::{PortError, PortRange, PortSet};

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
    #[error("{}: {source}", path.display())]
    Ports {
        path: PathBuf,
        #[source]
        source: PortError,
    },
}

impl KernelSettings {
    pub fn read(host: &Host) -> Result<Self, SettingsError> {
        Self::read_with(host, &mut Fresh)
    }

    /// As [`KernelSettings::read`], through `reader` (the daemon keeps the
    /// files open).
    pub fn read_with(host: &Host, reader: &mut dyn ProcRead) -> Result<Self, SettingsError> {
        let port_range = Self::read_range_with(host, reader)?;
        let reserved_path = host.proc_sys(kernel::KEY_RESERVED_PORTS);
        let reserved_ports = PortSet::parse(&read(reader, &reserved_path)?).map_err(|source| {
            SettingsError::Ports {
                path: reserved_path.clone(),
                source,
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

    /// `ip_local_port_range` alone, through `reader`: what the daemon
    /// reads on a poll between two reads of every setting (docs/DESIGN.md,
    /// "Reading the settings").
    pub fn read_range_with(
        host: &Host,
        reader: &mut dyn ProcRead,
    ) -> Result<PortRange, SettingsError> {
        let path = host.proc_sys(kernel::KEY_PORT_RANGE);
        PortRange::parse(&read(reader, &path)?)
            .map_err(|source| SettingsError::Ports { path, source })
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

/// The settings unit tests start from: the range `low..=high`, these ports
/// reserved, the kernel's defaults for the rest.
#[cfg(test)]
pub(crate) fn for_tests(low: u16, high: u16, reserved: &[u16]) -> KernelSettings {
    let mut reserved_ports = PortSet::new();
    for p in reserved {
        reserved_ports.insert(*p);
    }
    KernelSettings {
        port_range: PortRange::new(low, high).expect("a test range"),
        reserved_ports,
        unprivileged_port_start: 1024,
        tcp_tw_reuse: TwReuse::LoopbackOnly,
        tcp_timestamps: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(range: &[u8], reserved: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let ipv4 = dir.path().join("proc/sys/net/ipv4");
        std::fs::create_dir_all(&ipv4).unwrap();
        std::fs::write(ipv4.join("ip_local_port_range"), range).unwrap();
        std::fs::write(ipv4.join("ip_local_reserved_ports"), reserved).unwrap();
        dir
    }

    #[test]
    fn errors_name_the_file_and_the_value() {
        let dir = fixture(b"40000 40099\n", b"40010,4x\n");
        let err = KernelSettings::read(&Host::new(dir.path()))
            .unwrap_err()
            .to_string();
        let path = dir.path().join("proc/sys/net/ipv4/ip_local_reserved_ports");
        assert_eq!(
            err,
            format!("{}: \"4x\" is not a port number (0-65535)", path.display())
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary bytes in the files: a value or an error naming the file.
        #[test]
        fn arbitrary_bytes_give_an_error_naming_the_file(
            range in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            reserved in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            which in 0..2usize,
        ) {
            let good: [&[u8]; 2] = [b"40000 40099\n", b"\n"];
            let (range, reserved) = if which == 0 {
                (&range[..], good[1])
            } else {
                (good[0], &reserved[..])
            };
            let dir = fixture(range, reserved);
            if let Err(e) = KernelSettings::read(&Host::new(dir.path())) {
                let file = ["ip_local_port_range", "ip_local_reserved_ports"][which];
                let path = dir.path().join("proc/sys/net/ipv4").join(file);
                let e = e.to_string();
                proptest::prop_assert!(e.starts_with(&format!("{}: ", path.display())), "{}", e);
            }
        }
    }
}
