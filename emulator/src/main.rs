//! `graph-relay-emulator`: runs the Entra + Graph emulator as a process, for manual tests and
//! benchmarks of a relay binary; faults and recordings are reached through `/_emulator/...`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use graph_relay_emulator::{EmulatorConfig, start_on};

/// Emulator of Microsoft Entra's token endpoint and Microsoft Graph sendMail (loopback only).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Tenant id (GUID).
    #[arg(long)]
    tenant: String,
    /// Extra tenant domain accepted in place of the GUID (repeatable).
    #[arg(long = "domain")]
    domains: Vec<String>,
    /// Application (client) id.
    #[arg(long)]
    client_id: String,
    /// Client secret value.
    #[arg(long)]
    client_secret: String,
    /// Mailbox that exists (repeatable); without any, every mailbox exists.
    #[arg(long = "mailbox")]
    mailboxes: Vec<String>,
    /// Access-token lifetime in seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime: u64,
    /// Delay added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "graph-relay-emulator: refusing to listen on non-loopback address {}",
            args.listen
        );
        return ExitCode::from(2);
    }
    let mut config = EmulatorConfig::single(args.tenant, args.client_id, args.client_secret);
    config.tenants[0].domains = args.domains;
    config.mailboxes = (!args.mailboxes.is_empty()).then_some(args.mailboxes);
    config.token_lifetime = Duration::from_secs(args.token_lifetime);
    config.latency = Duration::from_millis(args.latency_ms);
    let emulator = match start_on(args.listen, config).await {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln!(
                "graph-relay-emulator: cannot listen on {}: {e}",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    println!("graph-relay-emulator listening on {}", emulator.url());
    // Runs until killed; there is no state worth a graceful shutdown.
    std::future::pending::<()>().await;
    ExitCode::SUCCESS
}
