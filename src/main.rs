//! The `graph-relay` binary: everything happens in [`graph_relay::cli`].

/// Under load most allocations are short-lived buffers freed on another thread than the one
/// that made them; mimalloc handles that with less CPU than glibc's malloc (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    graph_relay::cli::main()
}
