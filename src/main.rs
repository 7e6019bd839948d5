//! The `snakeway` binary.

fn main() -> std::process::ExitCode {
    snakeway::cli::main()
}
