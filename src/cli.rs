//! The command line: `serve`, `check-config`, `test-auth`, `test-mail`, `queue`, `health`, `sendmail` (also when the binary is invoked
//! as `sendmail`), their flags and exit codes.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{self, AppError, Mode};
use crate::config::{Config, ConfigError, LogFormat, Sources};
use crate::{http, sendmail, telemetry};

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
    /// Inspect and manage the queue (of the running daemon, or of the spool when stopped).
    Queue {
        #[command(subcommand)]
        command: crate::queue::cli::QueueCommand,
    },
    /// Get a token with the configured credentials and report tenant, app, expiry and roles.
    /// Exit 0 ok, 2 token refused, 3 no Mail.Send role, 78 configuration error.
    TestAuth,
    /// Send one real test message through Graph and report the result.
    /// Exit 0 sent, 2 token refused, 4 Graph refused, 78 configuration error.
    TestMail {
        /// Recipient address.
        #[arg(long, value_name = "ADDR")]
        to: String,
        /// Mailbox to send as (default: graph.fixed_sender).
        #[arg(long, value_name = "MAILBOX")]
        from: Option<String>,
    },
    /// Ask the running relay whether it is alive (exit 0) or, with --ready, ready for mail.
    Health {
        #[arg(long)]
        ready: bool,
    },
    /// The sendmail interface: read a message on stdin and hand it to the running relay.
    /// Options: -t, -i/-oi, -f ADDR, -F NAME, recipients.
    #[command(disable_help_flag = true)]
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    // One TLS provider for the whole process, installed before any TLS configuration is built.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut argv = std::env::args();
    let invoked_as = argv.next().unwrap_or_default();
    if Path::new(&invoked_as)
        .file_name()
        .is_some_and(|name| name == "sendmail")
    {
        return run_sendmail(None, &argv.collect::<Vec<_>>());
    }
    let cli = Cli::parse();
    if let Command::Sendmail { args } = &cli.command {
        return run_sendmail(cli.config.as_deref(), args);
    }
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
            telemetry::init_logging(config.log.format);
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
            let config = load(cli.config.as_deref(), &env)?;
            config.auth.all_credentials()?;
            print!("{}", config.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { ready } => {
            let config = load(cli.config.as_deref(), &env)?;
            let runtime = tokio::runtime::Runtime::new()?;
            match runtime.block_on(http::probe(config.http.listen, ready)) {
                Ok(body) => {
                    print!("{body}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => {
                    eprintln!("graph-relay health: {err}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Queue { command } => {
            let config = load(cli.config.as_deref(), &env)?;
            print!("{}", crate::queue::cli::run(&config, command)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::TestAuth => admin_check(cli.config.as_deref(), &env, |config| async move {
            crate::admin::test_auth(&config).await
        }),
        Command::TestMail { ref to, ref from } => {
            admin_check(cli.config.as_deref(), &env, |config| async move {
                crate::admin::test_mail(&config, from.as_deref(), to).await
            })
        }
        Command::Sendmail { .. } => unreachable!("handled before clap's error path"),
    }
}

/// Runs `test-auth` or `test-mail`: the report on stdout, its exit status.
fn admin_check<F, Fut>(
    file: Option<&Path>,
    env: &HashMap<String, String>,
    check: F,
) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<crate::admin::Report>>,
{
    let config = load(file, env)?;
    telemetry::init_logging(config.log.format);
    let report = tokio::runtime::Runtime::new()?.block_on(check(config))?;
    print!("{}", report.text);
    Ok(ExitCode::from(report.exit))
}

fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    Config::load(&Sources {
        file,
        env,
        dry_run: None,
    })
}

/// sendmail's own conventions: sysexits exit codes, messages on stderr, nothing on stdout.
fn run_sendmail(config: Option<&Path>, args: &[String]) -> ExitCode {
    telemetry::init_logging(LogFormat::Text);
    let env: HashMap<String, String> = std::env::vars().collect();
    let result = (|| {
        let parsed = sendmail::parse_args(args)?;
        let listen = load(config, &env)?.smtp.listen;
        let mut input = Vec::new();
        std::io::stdin().read_to_end(&mut input).map_err(|err| {
            sendmail::SendmailError::Message(format!("sendmail: reading stdin: {err}"))
        })?;
        let (message, recipients) = sendmail::prepare(&parsed, &input)?;
        let runtime = tokio::runtime::Runtime::new()
            .map_err(|err| sendmail::SendmailError::Message(format!("sendmail: {err}")))?;
        runtime.block_on(sendmail::submit(
            listen,
            parsed.sender.as_deref(),
            &message,
            &recipients,
        ))
    })();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err}");
            ExitCode::from(err.exit_code())
        }
    }
}
