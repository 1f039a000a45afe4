//! Build information for `portd --version` (src/commands/cli.rs): the git
//! commit the binary was built from, the target, the profile and the
//! compiler. Only what is known: outside a git checkout of this package (a
//! source tarball, `cargo install` from a registry) the commit is
//! "unknown", unless the builder states it in `PORTD_BUILD_COMMIT`. No
//! dependency: it runs `git` and `$RUSTC --version`, nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PORTD_BUILD_COMMIT");
    let commit = match std::env::var("PORTD_BUILD_COMMIT") {
        Ok(stated) if !stated.trim().is_empty() => stated.trim().to_string(),
        _ => git_commit().unwrap_or_else(|| "unknown".into()),
    };
    let short: String = commit.chars().take(12).collect();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = output(Command::new(rustc).arg("--version")).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PORTD_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=PORTD_BUILD_COMMIT_SHORT={short}");
    println!("cargo:rustc-env=PORTD_BUILD_RUSTC={rustc}");
    for (var, key) in [("TARGET", "TARGET"), ("PROFILE", "PROFILE")] {
        let value = std::env::var(var).unwrap_or_else(|_| "unknown".into());
        println!("cargo:rustc-env=PORTD_BUILD_{key}={value}");
    }
}

/// HEAD of the git checkout whose top is this package, with "-dirty" when
/// what the binary is built from (src/, Cargo.toml, Cargo.lock, build.rs)
/// differs from it. Never the commit of an enclosing repository that merely
/// contains the package.
fn git_commit() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = output(git(&manifest).args(["rev-parse", "--show-toplevel"]))?;
    if Path::new(&top).canonicalize().ok()? != manifest.canonicalize().ok()? {
        return None;
    }
    let head = output(git(&manifest).args(["rev-parse", "HEAD"]))?;
    // Rerun when HEAD moves (a commit, a checkout) or a built file changes:
    // paths that exist only, since a missing one reruns every build.
    for path in ["HEAD", "packed-refs"] {
        rerun_if_exists(
            &manifest,
            output(git(&manifest).args(["rev-parse", "--git-path", path])),
        );
    }
    let branch = output(git(&manifest).args(["symbolic-ref", "-q", "HEAD"]));
    if let Some(branch) = branch {
        rerun_if_exists(
            &manifest,
            output(git(&manifest).args(["rev-parse", "--git-path", &branch])),
        );
    }
    let built = ["src", "Cargo.toml", "Cargo.lock", "build.rs"];
    for path in built {
        rerun_if_exists(&manifest, Some(path.to_string()));
    }
    let changes = output(
        git(&manifest)
            .args(["status", "--porcelain", "--untracked-files=no", "--"])
            .args(built),
    )?;
    Some(if changes.is_empty() {
        head
    } else {
        format!("{head}-dirty")
    })
}

fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    // `status` must not refresh the index: a build writes nothing there.
    cmd.arg("--no-optional-locks").arg("-C").arg(dir);
    cmd
}

fn rerun_if_exists(dir: &Path, path: Option<String>) {
    if let Some(path) = path {
        let path = dir.join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// The trimmed stdout of a command that succeeded.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}
