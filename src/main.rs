fn main() -> std::process::ExitCode {
    portd::cli::main()
}
