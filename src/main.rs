//! The `snakeway` binary.

/// jemalloc, not glibc's allocator (see docs/benchmarks.md § The allocator).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    snakeway::cli::main()
}
