//! The command line: `serve`, `check-config`, their flags, logging setup and exit codes.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{self, AppError, Mode};
use crate::config::{Config, ConfigError, Sources};

/// Exit status for configuration errors (EX_CONFIG); the systemd unit does not restart on it.
pub const EXIT_CONFIG: u8 = 78;

/// SMTP-to-Microsoft-Graph relay.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (TOML). Default: $GRAPH_RELAY_CONFIG, else built-in defaults.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: accept SMTP, spool, deliver through Microsoft Graph.
    Serve {
        /// Deliver nowhere: write each Graph request as a JSON file under DIR (no credentials
        /// needed, Microsoft never contacted).
        #[arg(long, value_name = "DIR")]
        dry_run: Option<PathBuf>,
    },
    /// Validate the configuration and print it as it takes effect (secrets redacted).
    CheckConfig,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // One TLS provider for the whole process, installed before any TLS configuration is built.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let code = match err.downcast_ref::<AppError>() {
                Some(AppError::Config(_)) => EXIT_CONFIG,
                Some(AppError::Smtp(err)) if !err.is_retryable() => EXIT_CONFIG,
                _ if err.downcast_ref::<ConfigError>().is_some() => EXIT_CONFIG,
                _ => 1,
            };
            eprintln!("graph-relay: {err:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env: HashMap<String, String> = std::env::vars().collect();
    match cli.command {
        Command::Serve { dry_run } => {
            let dry_run = dry_run.map(std::path::absolute).transpose()?;
            let mode = dry_run.clone().map_or(Mode::Graph, Mode::DryRun);
            let load = move || {
                Config::load(&Sources {
                    file: cli.config.as_deref(),
                    env: &env,
                    dry_run: dry_run.as_deref(),
                })
            };
            let config = load()?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(app::run(
                config,
                mode,
                Box::new(load),
                app::shutdown_signal(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let config = Config::load(&Sources {
                file: cli.config.as_deref(),
                env: &env,
                dry_run: None,
            })?;
            config.auth.credentials()?;
            print!("{}", config.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Human-readable logs on stderr (journald and `docker logs` capture it); `RUST_LOG` filters.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
