//! `graph-relay queue list | show ID | retry ID|--all | delete ID | stats`: asks the running
//! daemon through its control socket, or reads the spool when no daemon holds it.

use std::fmt::Write as _;

use anyhow::Context as _;
use clap::Subcommand;

use super::control::{self, Answer, Request, Stats};
use super::scheduler::{EntryState, EntryView};
use super::spool::{QueueId, Spool, SpoolError};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Every queued, deferred, in-flight and failed message.
    List,
    /// One message: envelope, attempts, next attempt, last error.
    Show { id: QueueId },
    /// Attempt a message now (a failed one goes back into the queue), or every queued one.
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<QueueId>,
        #[arg(long)]
        all: bool,
    },
    /// Remove a message from the queue or from failed/ for good.
    Delete { id: QueueId },
    /// Counts by state: queued, deferred, failed (and in flight).
    Stats,
}

/// Runs a queue command and returns what to print.
///
/// # Errors
/// The spool cannot be read, the daemon cannot be reached, or the request was refused.
pub fn run(config: &Config, command: QueueCommand) -> anyhow::Result<String> {
    let request = match command {
        QueueCommand::List => Request::List,
        QueueCommand::Show { id } => Request::Show { id },
        QueueCommand::Retry { id, .. } => Request::Retry { id },
        QueueCommand::Delete { id } => Request::Delete { id },
        QueueCommand::Stats => Request::Stats,
    };
    let dir = config.queue.dir();
    let answer = match Spool::open(dir) {
        Ok((spool, recovered)) => {
            control::answer_offline(&spool, recovered.entries, request.clone())
        }
        Err(SpoolError::Locked(_)) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(control::ask(dir, &request))
                .with_context(|| {
                    format!(
                        "the daemon holds {} but its control socket does not answer",
                        dir.display()
                    )
                })?
        }
        Err(err) => return Err(err).context("cannot open the queue"),
    };
    let answer = answer.map_err(anyhow::Error::msg)?;
    Ok(match (request, answer) {
        (Request::Show { .. }, Answer::Entries(entries)) => details(&entries),
        (_, Answer::Entries(entries)) => table(&entries),
        (_, Answer::Stats(stats)) => stats_table(&stats),
        (Request::Delete { id }, Answer::Changed(0)) => anyhow::bail!("no entry {id}"),
        (Request::Delete { .. }, Answer::Changed(_)) => "deleted\n".into(),
        (_, Answer::Changed(n)) => format!("{n} message(s) will be attempted now\n"),
    })
}

fn state_name(state: EntryState) -> &'static str {
    match state {
        EntryState::Queued => "queued",
        EntryState::Deferred => "deferred",
        EntryState::InFlight => "in flight",
        EntryState::Failed => "failed",
    }
}

fn time(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// One line per message, columns aligned.
fn table(entries: &[EntryView]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "STATE".into(),
        "TRIES".into(),
        "FROM".into(),
        "RCPTS".into(),
        "LAST ERROR".into(),
    ]];
    for entry in entries {
        let meta = &entry.meta;
        let mut error = meta.last_error.clone().unwrap_or_default();
        if error.chars().count() > 60 {
            error = error.chars().take(59).chain(['…']).collect();
        }
        rows.push([
            meta.id.to_string(),
            state_name(entry.state).into(),
            meta.attempts.to_string(),
            if meta.envelope.mail_from.is_empty() {
                "<>".into()
            } else {
                meta.envelope.mail_from.clone()
            },
            meta.envelope.rcpt_to.len().to_string(),
            error,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|col| {
            rows.iter()
                .map(|row| row[col].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let _ = writeln!(out, "{} message(s)", entries.len());
    out
}

fn details(entries: &[EntryView]) -> String {
    let mut out = String::new();
    for entry in entries {
        let meta = &entry.meta;
        let _ = writeln!(out, "id:           {}", meta.id);
        let _ = writeln!(out, "state:        {}", state_name(entry.state));
        let _ = writeln!(out, "from:         <{}>", meta.envelope.mail_from);
        let _ = writeln!(out, "to:           {}", meta.envelope.rcpt_to.join(", "));
        let _ = writeln!(out, "client:       {}", meta.envelope.client);
        let _ = writeln!(out, "received:     {}", time(meta.envelope.received_at_ms));
        let _ = writeln!(out, "attempts:     {}", meta.attempts);
        if entry.state != EntryState::Failed {
            let _ = writeln!(out, "next attempt: {}", time(meta.next_attempt_at_ms));
        }
        let _ = writeln!(
            out,
            "last error:   {}",
            meta.last_error.as_deref().unwrap_or("-")
        );
    }
    out
}

fn stats_table(stats: &Stats) -> String {
    let mut out = format!(
        "queued    {}\ndeferred  {}\nin flight {}\nfailed    {}\n",
        stats.queued, stats.deferred, stats.in_flight, stats.failed
    );
    for (name, value) in &stats.counters {
        let _ = writeln!(out, "{name} {value}");
    }
    out
}
