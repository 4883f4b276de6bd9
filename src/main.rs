//! The `graph-relay` binary: everything happens in [`graph_relay::cli`].

fn main() -> std::process::ExitCode {
    graph_relay::cli::main()
}
