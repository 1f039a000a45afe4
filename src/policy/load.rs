//! Reading the policy file: owner and mode checked on the open file, a
//! size limit, UTF-8, then [`super::file::parse`].

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Policy;
use super::diagnostics::{Diagnostic, PolicyError, position};
use super::file::parse;
use crate::base::fsutil;

/// Reads, checks (owner and mode, see [`check_file_safety`]) and parses the
/// policy file. A missing file is an error here; see [`load_or_default`].
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let file = fsutil::open_regular(path).map_err(|e| cannot_read(path, &e))?;
    read_open_file(path, file)
}

/// Like [`load`], but a file that does not exist gives the built-in defaults.
/// The flag tells whether the file was found.
pub fn load_or_default(path: &Path) -> Result<(Policy, bool), PolicyError> {
    match fsutil::open_regular(path) {
        Ok(file) => read_open_file(path, file).map(|policy| (policy, true)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Policy::default(), false)),
        Err(e) => Err(cannot_read(path, &e)),
    }
}

/// The policy at `path` for a command: a path given with `--config`
/// (`required`) must exist; only the default path may be absent, and then
/// the built-in defaults apply ([`load_or_default`]).
pub fn load_configured(path: &Path, required: bool) -> Result<(Policy, bool), PolicyError> {
    if !required {
        return load_or_default(path);
    }
    match fsutil::open_regular(path) {
        Ok(file) => read_open_file(path, file).map(|policy| (policy, true)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PolicyError::whole_file(
            path,
            "the policy file given with --config does not exist; only the default \
             /etc/portd.toml may be absent (the built-in defaults then apply): \
             give an existing file, or leave --config out"
                .to_string(),
        )),
        Err(e) => Err(cannot_read(path, &e)),
    }
}

/// The longest policy file portd reads; real ones are a few KiB.
const POLICY_MAX_BYTES: u64 = 1024 * 1024;

fn read_open_file(path: &Path, file: File) -> Result<Policy, PolicyError> {
    // fstat the open file, so the file checked is the file read.
    let metadata = file.metadata().map_err(|e| cannot_read(path, &e))?;
    check_file_safety(path, &metadata, rustix::process::geteuid().as_raw())?;
    if metadata.len() > POLICY_MAX_BYTES {
        return Err(too_long(path, metadata.len()));
    }
    let bytes = fsutil::read_to_limit(file, POLICY_MAX_BYTES).map_err(|e| match e.kind() {
        // Grew between the fstat and the read.
        io::ErrorKind::InvalidData => too_long(path, POLICY_MAX_BYTES + 1),
        _ => cannot_read(path, &e),
    })?;
    parse_bytes(path, bytes)
}

/// Parses the bytes of a policy file: UTF-8 text, then [`parse`].
pub fn parse_bytes(path: &Path, bytes: Vec<u8>) -> Result<Policy, PolicyError> {
    match String::from_utf8(bytes) {
        Ok(text) => parse(path, &text),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let prefix = String::from_utf8_lossy(&bytes[..valid]);
            Err(PolicyError {
                diagnostics: vec![Diagnostic {
                    path: path.to_path_buf(),
                    position: Some(position(&prefix, valid)),
                    message: "the file is not valid UTF-8; TOML files must be UTF-8 text"
                        .to_string(),
                }],
                omitted: 0,
            })
        }
    }
}

/// A policy over the size limit: the limit, and what to do about it (a
/// long comment block is the likely cause).
fn too_long(path: &Path, len: u64) -> PolicyError {
    PolicyError::whole_file(
        path,
        format!(
            "the policy file is {len} bytes, more than the {POLICY_MAX_BYTES} (1 MiB) portd \
             reads: shorten it, for instance by moving long comment blocks to a file beside it \
             (a complete policy is a few KiB)"
        ),
    )
}

fn cannot_read(path: &Path, error: &io::Error) -> PolicyError {
    PolicyError::whole_file(path, format!("cannot read the policy file: {error}"))
}

/// Refuses a policy file that someone other than root or the invoking user
/// could have written, as sshd's `StrictModes` does: whoever can write the
/// policy decides what portd writes into the kernel.
pub fn check_file_safety(
    path: &Path,
    metadata: &Metadata,
    invoking_uid: u32,
) -> Result<(), PolicyError> {
    let shown = shell_quote(path);
    let mut diagnostics = Vec::new();
    let mut refuse = |message: String| {
        diagnostics.push(Diagnostic {
            path: path.to_path_buf(),
            position: None,
            message,
        })
    };
    if !metadata.is_file() {
        refuse("refusing the policy file: it is not a regular file".to_string());
    }
    let owner = metadata.uid();
    if owner != 0 && owner != invoking_uid {
        refuse(format!(
            "refusing the policy file: it is owned by uid {owner}, which is neither root nor \
             the user running portd (uid {invoking_uid}); fix: chown root: {shown}"
        ));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        refuse(format!(
            "refusing the policy file: mode {mode:04o} lets group or others write it; \
             fix: chmod go-w {shown}"
        ));
    }
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(PolicyError {
            diagnostics,
            omitted: 0,
        })
    }
}

/// Quotes a path for a shell command line when it needs it.
pub(super) fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
