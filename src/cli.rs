//! The command line: run, check, route, ring. Parses arguments, prints summaries and
//! turns outcomes into exit codes; the work itself is the library's.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{self, Config, KeySource};
use crate::snapshot::Snapshot;

/// ringlb: a consistent-hashing load-balancing reverse proxy.
#[derive(Debug, Parser)]
#[command(name = "ringlb", version, about)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, env = "RINGLB_CONFIG", default_value = "lb.yaml")]
    pub config: PathBuf,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do; without one, run the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config, print a summary; exit 0 when valid, 1 when not.
    Check,
    /// For each KEY: its backend and failover order. KEY is a value as the first source
    /// of `hash.key` yields it: a path, a header's value, an IP address, a host, ...
    Route {
        /// Key values, e.g. request paths when `hash.key` is `path`.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Each backend's share of the key space against its ideal share.
    Ring,
    /// What changing OLD into NEW does to the key space: the share of keys that move,
    /// from which backend to which, and each backend's new share.
    Diff {
        /// The config running now.
        old: PathBuf,
        /// The config about to replace it.
        new: PathBuf,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Exit code of a usage error, a flag or argument that cannot be right (clap's own).
const USAGE_ERROR: u8 = 2;

/// The whole binary: parse, dispatch, exit code. 0 success, 1 invalid config or
/// start-up failure (or output that cannot be written), 2 usage error.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return parse_failed(&e),
    };
    let _flush_logs_at_exit = crate::logging::init(match cli.log_format {
        LogFormat::Text => crate::logging::Format::Text,
        LogFormat::Json => crate::logging::Format::Json,
    });
    if let Some(Command::Diff { old, new }) = &cli.command {
        return diff_files(old, new);
    }
    let loaded = config::load(&cli.config);
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            complain(&e);
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        None => run(&cli.config, config),
        Some(cmd) => match Snapshot::build(config, None) {
            Ok(snap) => {
                let out = match cmd {
                    Command::Check => check_summary(&snap),
                    Command::Route { keys } => match route_table(&snap, &keys) {
                        Ok(table) => table,
                        Err(e) => {
                            complain(&format_args!("ringlb route: {e}"));
                            return ExitCode::from(USAGE_ERROR);
                        }
                    },
                    Command::Ring => ring_table(&snap),
                    // Handled before the config is loaded.
                    Command::Diff { .. } => String::new(),
                };
                write_out(&out)
            }
            Err(e) => {
                complain(&format_args!("{}: {e}", cli.config.display()));
                ExitCode::FAILURE
            }
        },
    }
}

/// What clap does on a parse "failure", but with `--help` and `--version` written
/// as any other output (see [`write_out`]); usage errors go to stderr with exit 2.
fn parse_failed(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        // A terminal can be neither closed nor full, and clap colours for it.
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion if !io::stdout().is_terminal() => {
            write_out(&e.render().to_string())
        }
        _ => {
            // Printing to stderr: if even that fails, the exit code is all that is left.
            let _ = e.print();
            match u8::try_from(e.exit_code()) {
                Ok(code) => ExitCode::from(code),
                Err(_) => ExitCode::from(USAGE_ERROR),
            }
        }
    }
}

/// Writes a command's output to stdout. A closed stdout (the reader is gone, as with
/// `| head -1`) ends the command quietly with 0, as other Unix tools end; any other
/// failure, such as a full disk, is an error sentence and exit 1.
fn write_out(text: &str) -> ExitCode {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            complain(&format_args!("ringlb: cannot write the output: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// One error line on stderr; unlike `eprintln!`, no panic when stderr is closed.
fn complain(message: &dyn std::fmt::Display) {
    let _ = writeln!(io::stderr(), "{message}");
}

fn run(path: &std::path::Path, config: Config) -> ExitCode {
    let path = path.to_path_buf();
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Even one worker stays on the multi-threaded scheduler: its LIFO slot runs a task
    // woken by the one running next, which h2 streams ping-ponging with their
    // connection need. A current-thread runtime saved 1.3% of instructions on HTTP/1.1
    // but cost ~15% more CPU and 30% more memory on h2c (BENCHMARKS.md).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            complain(&format_args!("ringlb: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let stop = CancellationToken::new();
        crate::shutdown::on_signal(stop.clone());
        info!(config = %config.origin, workers, "starting");
        match crate::server::run(&path, config, stop).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                complain(&format_args!("ringlb: {e}"));
                ExitCode::FAILURE
            }
        }
    })
}

/// `ringlb diff OLD NEW`.
fn diff_files(old: &std::path::Path, new: &std::path::Path) -> ExitCode {
    let build = |p: &std::path::Path| -> Result<Snapshot, String> {
        let config = config::load(p).map_err(|e| e.to_string())?;
        Snapshot::build(config, None).map_err(|e| format!("{}: {e}", p.display()))
    };
    match (build(old), build(new)) {
        (Ok(o), Ok(n)) => write_out(&crate::diff::diff(&o, &n).to_string()),
        (Err(e), _) | (_, Err(e)) => {
            complain(&e);
            ExitCode::FAILURE
        }
    }
}

/// `ringlb check`: what the config says, in a few lines.
pub fn check_summary(snap: &Snapshot) -> String {
    let c = &snap.config;
    let mut out = String::new();
    let listeners: Vec<String> = c.listeners.iter().map(|l| l.bind.to_string()).collect();
    let keys: Vec<String> = c.hash.key.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "{}: valid", c.origin);
    let _ = writeln!(out, "listeners: {}", listeners.join(", "));
    for l in &c.listeners {
        let Some(tls) = &l.tls else { continue };
        for (i, cert) in tls.certificates.iter().enumerate() {
            let expiry = humantime::format_rfc3339_seconds(cert.not_after);
            let _ = writeln!(
                out,
                "  tls {} cert {}{}: {} (expires {expiry}{})",
                l.bind,
                cert.cert.display(),
                if i == 0 { ", default" } else { "" },
                cert.names.join(", "),
                if cert.expired() { ", EXPIRED" } else { "" }
            );
        }
    }
    let _ = writeln!(
        out,
        "hash: key {}, {}, ring fingerprint {:016x}",
        keys.join(" then "),
        placement_summary(snap),
        snap.ring_fingerprint()
    );
    match &c.health_check {
        Some(h) => {
            let _ = writeln!(
                out,
                "health checks: GET {} every {:?} (timeout {:?}), down after {} failed, up after {} passed",
                h.path, h.interval, h.timeout, h.unhealthy_threshold, h.healthy_threshold
            );
        }
        None => {
            let _ = writeln!(out, "health checks: none");
        }
    }
    let od = &c.outlier_detection;
    if od.consecutive_failures == 0 {
        let _ = writeln!(out, "outlier detection: off");
    } else {
        let _ = writeln!(
            out,
            "outlier detection: eject after {} failed requests in a row, for {:?} (doubling on probation)",
            od.consecutive_failures, od.ejection_time
        );
    }
    let _ = writeln!(out, "backends: {}", c.backends.len());
    let shares = snap.shares();
    let width = c.backends.iter().map(|b| b.name.len()).max().unwrap_or(0);
    for (b, share) in c.backends.iter().zip(shares) {
        let _ = writeln!(
            out,
            "  {:width$}  {:21}  weight {:>4}  share {:6.2}%",
            b.name,
            b.address.to_string(),
            b.weight,
            share * 100.0
        );
    }
    out
}

/// `ringlb route`: one line per key.
///
/// # Errors
/// `KeyValueError` for the first key the first configured source can never yield
/// (`10.0.0.1:5555` for `client_ip`); nothing is printed then.
pub fn route_table(snap: &Snapshot, keys: &[String]) -> Result<String, crate::key::KeyValueError> {
    let mut out = String::new();
    // A key is read as the first configured source yields it (an IP for client_ip, ...).
    let source = snap.config.hash.key.first().unwrap_or(&KeySource::Path);
    for key in keys {
        let hash = crate::key::hash_value(source, key)?;
        let order: Vec<&str> = snap
            .placement
            .failover(hash)
            .map(|id| &*snap.backend(id).name)
            .collect();
        match order.first() {
            Some(first) => {
                let addr = snap
                    .placement
                    .owner(hash)
                    .map(|id| snap.backend(id).address.to_string())
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{key} -> {first} ({addr}); failover: {}",
                    order.join(", ")
                );
            }
            None => {
                let _ = writeln!(out, "{key} -> none (every backend has weight 0)");
            }
        }
    }
    Ok(out)
}

/// `ringlb ring`: share vs ideal per backend, and the spread.
pub fn ring_table(snap: &Snapshot) -> String {
    let c = &snap.config;
    let total: u64 = c.backends.iter().map(|b| u64::from(b.weight)).sum();
    let shares = snap.shares();
    let width = c
        .backends
        .iter()
        .map(|b| b.name.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:width$}  {:>6}  {:>7}  {:>8}  {:>8}  {:>6}",
        "backend", "weight", "points", "share", "ideal", "ratio"
    );
    let mut worst: f64 = 0.0;
    for (b, share) in c.backends.iter().zip(&shares) {
        let ideal = if total == 0 {
            0.0
        } else {
            b.weight as f64 / total as f64
        };
        let ratio = if ideal > 0.0 { share / ideal } else { 0.0 };
        worst = worst.max(ratio);
        let _ = writeln!(
            out,
            "{:width$}  {:>6}  {:>7}  {:>7.2}%  {:>7.2}%  {:>6.3}",
            b.name,
            b.weight,
            match snap.placement.algorithm() {
                crate::placement::Algorithm::Ring => u64::from(b.weight) * u64::from(c.hash.vnodes),
                crate::placement::Algorithm::MultiProbe => u64::from(b.weight),
                _ => 0,
            },
            share * 100.0,
            ideal * 100.0,
            ratio
        );
    }
    let _ = writeln!(
        out,
        "max/mean load: {worst:.3} ({}{})",
        placement_summary(snap),
        if snap.placement.shares_exact() {
            ""
        } else {
            "; shares estimated over 65,536 keys"
        }
    );
    out
}

/// The algorithm and the size of its structure, as `check` and `ring` print them
/// (the ring's wording is the one from before there were other algorithms).
fn placement_summary(snap: &Snapshot) -> String {
    let p = &snap.placement;
    match p.algorithm() {
        crate::placement::Algorithm::Ring => {
            format!("{} vnodes, {} points", snap.config.hash.vnodes, p.len())
        }
        a => format!("algorithm {a}, {} {}", p.len(), p.unit()),
    }
}
