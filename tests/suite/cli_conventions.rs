//! Command-line conventions: what `--help` and the shipped completion
//! scripts offer is what an operator may use (no hidden test option, no
//! rustdoc markup as value help), and `--version` says what the binary was
//! built from, by a toolchain at least Cargo.toml's `rust-version`.

use std::path::Path;

use clap::CommandFactory;
use portd::commands::cli::Cli;

use super::util::{portd, text};

/// The hidden options (`--NAME`) and subcommands of the command line, as
/// the parser declares them.
fn hidden() -> Vec<String> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut hidden = Vec::new();
    let mut commands = vec![cmd];
    while let Some(cmd) = commands.pop() {
        for arg in cmd.get_arguments().filter(|a| a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                hidden.push(format!("--{long}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() {
                hidden.push(sub.get_name().to_string());
            }
            commands.push(sub.clone());
        }
    }
    hidden.sort();
    hidden.dedup();
    hidden
}

/// The subcommands an operator sees, with their path: `["status"]`, ...
fn visible_subcommands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

fn output_of(args: &[&str]) -> String {
    let out = portd().args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Problems of one text an operator reads: a hidden option or subcommand
/// named as a word, or a rustdoc link.
fn offers_hidden(what: &str, shown: &str, hidden: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let words: Vec<&str> = shown
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .collect();
    for name in hidden {
        if words.contains(&name.as_str()) {
            problems.push(format!("{what} offers the hidden {name}"));
        }
    }
    if shown.contains("[`") || shown.contains("\\[\\`") {
        problems.push(format!("{what} carries a rustdoc link (\"[`\")"));
    }
    problems
}

#[test]
fn the_test_options_are_hidden_and_still_work() {
    let hidden = hidden();
    for name in ["--root", "--source", "completions"] {
        assert!(
            hidden.contains(&name.to_string()),
            "{name} is not hidden: {hidden:?}"
        );
    }
    // Hidden, not gone: the fixture-tree tests run through them.
    let root = super::util::fixture_host();
    let out = portd()
        .arg("--root")
        .arg(root.path())
        .args(["--source", "procfs", "status", "--json"])
        .output()
        .unwrap();
    assert_eq!(super::util::stdout_json(&out)["source"], "procfs");
}

#[test]
fn no_help_text_offers_a_hidden_option() {
    let hidden = hidden();
    let mut problems = Vec::new();
    let mut pages = vec![vec!["--help".to_string()], vec!["-h".to_string()]];
    for sub in visible_subcommands() {
        pages.push(vec![sub.clone(), "--help".into()]);
        pages.push(vec!["help".into(), sub]);
    }
    for page in pages {
        let args: Vec<&str> = page.iter().map(String::as_str).collect();
        let shown = output_of(&args);
        problems.extend(offers_hidden(
            &format!("portd {}", page.join(" ")),
            &shown,
            &hidden,
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_shipped_completion_script_offers_a_hidden_option() {
    let hidden = hidden();
    let mut problems = Vec::new();
    // As packaging/build.sh generates the scripts the packages install.
    for shell in ["bash", "zsh", "fish"] {
        let script = output_of(&["completions", shell]);
        for sub in visible_subcommands() {
            assert!(script.contains(&sub), "{shell}: {sub} is not offered");
        }
        // fish spells an option `-l config`.
        assert!(
            script.contains("config"),
            "{shell}: --config is not offered"
        );
        problems.extend(offers_hidden(
            &format!("the {shell} completions"),
            &script,
            &hidden,
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// HEAD of the checkout this test runs from, when it is a git checkout of
/// this package (CI's fresh clone is).
fn checkout_head() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["--no-optional-locks", "-C", dir])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| text(&out.stdout).trim().to_string())
    };
    let top = git(&["rev-parse", "--show-toplevel"])?;
    let same = std::fs::canonicalize(top).ok()? == std::fs::canonicalize(dir).ok()?;
    same.then(|| git(&["rev-parse", "HEAD"])).flatten()
}

#[test]
fn version_says_the_commit_target_and_profile_it_was_built_with() {
    let long = output_of(&["--version"]);
    let field = |name: &str| {
        long.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name}: line in\n{long}"))
    };
    assert!(
        long.starts_with(&format!("portd {}\n", env!("CARGO_PKG_VERSION"))),
        "{long}"
    );
    let commit = field("commit");
    match checkout_head() {
        Some(head) => assert!(
            commit == head || commit == format!("{head}-dirty"),
            "--version says commit {commit}, the checkout is at {head}"
        ),
        None => assert_eq!(commit, "unknown", "{long}"),
    }
    assert!(field("target").ends_with("-linux-gnu") || field("target").contains("linux"));
    assert!(["debug", "release"].contains(&field("profile")), "{long}");
    assert!(field("witness").contains("BPF"), "{long}");
    // -V: one line, with the commit's first 12 characters.
    let short = output_of(&["-V"]);
    let short_commit: String = commit.chars().take(12).collect();
    assert_eq!(
        short,
        format!(
            "portd {} (commit {short_commit})\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

/// `MAJOR.MINOR[.PATCH]` as numbers, for comparison.
fn version_numbers(version: &str) -> Vec<u32> {
    version
        .split('.')
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("not a version: {version}"))
        })
        .collect()
}

/// The README states Cargo.toml's `rust-version` as the minimum; CI runs
/// this test with the toolchain it builds with (cargo itself refuses an
/// older one, unless told `--ignore-rust-version`).
#[test]
fn the_toolchain_that_built_portd_is_at_least_the_rust_version_of_cargo_toml() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let minimum = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("Cargo.toml has no rust-version");
    assert_eq!(minimum, env!("CARGO_PKG_RUST_VERSION"));
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("Rust {minimum} or newer")),
        "README.md must state the minimum Rust version, {minimum}"
    );
    let long = output_of(&["--version"]);
    let rustc = long
        .lines()
        .find_map(|l| l.strip_prefix("rustc:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no rustc: line in\n{long}"));
    let used = rustc
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("cannot read the version of {rustc:?}"));
    assert!(
        version_numbers(used) >= version_numbers(minimum),
        "built with {rustc}, older than rust-version {minimum}"
    );
}
