//! The `aer` binary: everything lives in the library; see `aer --help`.

fn main() -> std::process::ExitCode {
    aer::cli::main()
}
