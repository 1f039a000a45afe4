//! The `sysctl.d` file format as systemd reads it: one assignment a line,
//! keys normalised, glob keys matched.

use std::path::Path;

use super::{Assignment, WHITESPACE, Warning};

/// `parse_file()` of systemd's sysctl.c: one assignment a line, `#`/`;`
/// comments, a `-` prefix to ignore failure (or, without `=`, to exclude the
/// key from globs). A comment after a value is part of the value.
pub(super) fn parse(
    file: &Path,
    text: &[u8],
    out: &mut Vec<Assignment>,
    warnings: &mut Vec<Warning>,
) {
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let decoded = String::from_utf8_lossy(raw);
        let content = decoded.trim_matches(WHITESPACE);
        if content.is_empty() || content.starts_with(['#', ';']) {
            continue;
        }
        let (raw_key, value, ignore_failure, exclusion) = match content.split_once('=') {
            Some((key, value)) => {
                let value = value.trim_matches(WHITESPACE).to_string();
                match key.strip_prefix('-') {
                    Some(key) => (key, value, true, false),
                    None => (key, value, false, false),
                }
            }
            None => match content.strip_prefix('-') {
                Some(key) => (key, String::new(), false, true),
                None => {
                    warnings.push(Warning {
                        file: file.to_path_buf(),
                        line,
                        message: format!("line is not an assignment, ignored: {content}"),
                    });
                    continue;
                }
            },
        };
        let key = normalize_key(raw_key);
        if key.is_empty() {
            warnings.push(Warning {
                file: file.to_path_buf(),
                line,
                message: format!("no key before '=', ignored: {content}"),
            });
            continue;
        }
        out.push(Assignment {
            glob: key.contains(['*', '?', '[']),
            key,
            value,
            file: file.to_path_buf(),
            line,
            ignore_failure,
            exclusion,
        });
    }
}

/// The dotted form of a sysctl key, normalised as `sysctl_normalize()` does:
/// if the first separator is `.`, dots and slashes swap roles, so
/// `net.ipv4.conf.eth0/100.rp_filter` and `net/ipv4/conf/eth0.100/rp_filter`
/// are one key; empty and `.` path components are dropped.
pub fn normalize_key(raw: &str) -> String {
    let raw = raw.trim_matches(WHITESPACE);
    let first_separator = raw.bytes().find(|&b| b == b'.' || b == b'/');
    let path = if first_separator == Some(b'.') {
        swap_separators(raw)
    } else {
        raw.to_string()
    };
    let path = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/");
    swap_separators(&path)
}

fn swap_separators(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect()
}

/// Whether the glob `pattern` matches `key` (both dotted, normalised). systemd
/// globs the `/proc/sys` path, so wildcards stop at a separator:
/// `net.ipv4.*` matches `net.ipv4.ip_local_port_range`, `net.*` does not.
pub(super) fn key_matches_glob(pattern: &str, key: &str) -> bool {
    glob_match(
        swap_separators(pattern).as_bytes(),
        swap_separators(key).as_bytes(),
    )
}

/// `fnmatch(FNM_PATHNAME)` for `*`, `?` and `[...]` (with `!`/`^` and ranges);
/// no backslash escapes, which sysctl names never need.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => {
            let mut i = 0;
            loop {
                if glob_match(rest, &name[i..]) {
                    return true;
                }
                if i == name.len() || name[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some((b'?', rest)) => match name.split_first() {
            Some((&c, tail)) => c != b'/' && glob_match(rest, tail),
            None => false,
        },
        Some((b'[', rest)) => match (bracket(rest), name.split_first()) {
            (Some((matches, after)), Some((&c, tail))) => {
                c != b'/' && matches(c) && glob_match(after, tail)
            }
            (Some(_), None) => false,
            // No closing `]`: the `[` is literal.
            (None, _) => name.first() == Some(&b'[') && glob_match(rest, &name[1..]),
        },
        Some((&c, rest)) => name.first() == Some(&c) && glob_match(rest, &name[1..]),
    }
}

/// Parses a bracket expression after its `[`: a matcher and the rest of the
/// pattern, or `None` if there is no closing `]`.
fn bracket(pattern: &[u8]) -> Option<(impl Fn(u8) -> bool + '_, &[u8])> {
    let (negated, body) = match pattern.first() {
        Some(b'!' | b'^') => (true, &pattern[1..]),
        _ => (false, pattern),
    };
    // A `]` right after the opening bracket is a member, not the end.
    let close = 1 + body.get(1..)?.iter().position(|&b| b == b']')?;
    let set = &body[..close];
    let matches = move |c: u8| {
        let mut i = 0;
        let mut found = false;
        while i < set.len() {
            if i + 2 < set.len() && set[i + 1] == b'-' {
                found |= set[i] <= c && c <= set[i + 2];
                i += 3;
            } else {
                found |= set[i] == c;
                i += 1;
            }
        }
        found != negated
    };
    Some((matches, &body[close + 1..]))
}
