//! Reading `/etc/portd.toml`: TOML text → raw serde structs → validated [`Policy`].
//!
//! Every problem becomes one line `PATH:LINE:COLUMN: what is wrong and what is
//! allowed`, and all independent problems of a file are reported together.
//! The stages, one file each:
//! - [`super::load`]: the file itself (owner, mode, size, UTF-8);
//! - [`super::diagnostics`]: positions, messages, and deserializing the whole
//!   document however many errors it has;
//! - [`super::raw`]: the file as written (serde structs, every key optional);
//! - [`super::values`]: each leaf value checked on its own as it is deserialized;
//! - [`super::validate`]: the relations between keys, checked afterwards with
//!   the spans kept by [`toml::Spanned`], so those errors point at the key to fix.

use std::path::Path;

use toml::de::DeTable;

use super::Policy;
use super::diagnostics::{DiagnosticReport, deserialize_all, drop_unknown_keys};
use super::validate::validate;

pub use super::diagnostics::{DIAGNOSTICS_KEPT, Diagnostic, PolicyError, Position};
pub use super::load::{check_file_safety, load, load_configured, load_or_default, parse_bytes};
pub use super::validate::{INTERVAL_MIN, REMINDER_MIN};

/// Parses and validates policy text. `path` only names the file in messages.
///
/// Linear in the size of the file, however many errors it has: unknown keys
/// (the one error a file can hold without bound) are all found in one pass
/// before serde sees the document, so the deserialize-and-drop loop below
/// runs at most once per known key; positions are computed in one pass
/// over the text at the end.
pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    let mut report = DiagnosticReport {
        path,
        text,
        found: Vec::new(),
        dropped: Vec::new(),
    };
    let mut document = match DeTable::parse(text) {
        Ok(document) => document,
        Err(e) => {
            report.error(e.span(), format!("TOML syntax error: {}", e.message()));
            return Err(report.into_error());
        }
    };
    drop_unknown_keys(document.get_mut(), &mut report);
    let raw = deserialize_all(&mut document, &mut report);
    let policy = validate(raw, &mut report);
    if report.found.is_empty() {
        Ok(policy)
    } else {
        Err(report.into_error())
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
