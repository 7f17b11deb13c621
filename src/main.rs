//! The `aer` binary: everything lives in the library; see `aer --help`. The binary sets the
//! global allocator (mimalloc): the dataflow allocates and frees many small records, and glibc's
//! allocator was a third of the engine's time in profiles. Its settings are in `aer::allocator`,
//! applied before anything else runs.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    aer::allocator::configure();
    aer::cli::main()
}
