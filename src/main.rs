fn main() -> std::process::ExitCode {
    portd::commands::cli::main()
}

/// Runs before `main`, and before the Rust runtime reopens a closed
/// stdin, stdout or stderr on /dev/null: the only moment at which
/// `portd status >&-` can still be told from `portd status >/dev/null`.
extern "C" fn note_closed_stdout() {
    portd::commands::cli::note_closed_stdout();
}

// SAFETY: a function pointer in .init_array is called once by the dynamic
// loader (glibc passes it argc, argv, envp, which it ignores) before main;
// it only makes one fcntl() system call and stores a flag.
#[used]
#[unsafe(link_section = ".init_array")]
static NOTE_CLOSED_STDOUT: extern "C" fn() = note_closed_stdout;
