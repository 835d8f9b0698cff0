//! The `simgate` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// simgate: plaintext IoT devices in, TLS clouds out.
#[derive(Parser)]
#[command(name = "simgate", version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. `info`, `simgate=debug` (overrides RUST_LOG).
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log line format on stderr: `text` (colours only on a terminal) or `json` (one object
    /// per line: timestamp, level, target, fields, spans; for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Prints `listening NAME ADDR` per listener, `admin ADDR`, then `ready`.
    /// SIGHUP reloads the config; SIGINT/SIGTERM drain and stop.
    Run {
        /// Configuration file (TOML); see docs/configuration.md.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration file; prints each bad field with its path, exits 1 if invalid.
    /// Warnings (allowed but discouraged, e.g. an inline secret) go to stderr as
    /// `warning: PATH: MESSAGE`; they do not change the exit status.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the whole path on loopback: generated certificates, a built-in HTTPS cloud, simgate,
    /// and simulated devices. Prints rate and added latency every second; Ctrl-C for a summary.
    Demo {
        /// Simulated device connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Request body size in bytes.
        #[arg(long, default_value_t = 1024)]
        body_size: usize,
        /// Target requests per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Number of shards (default: one per core).
        #[arg(long)]
        shards: Option<usize>,
        /// Speak HTTP/1.1 to the demo cloud instead of HTTP/2 (one shared connection per shard).
        #[arg(long)]
        http1: bool,
    },
    /// A live terminal view of a running simgate, read from its admin API: throughput, errors,
    /// connections, cloud responses, probes, readiness, top SIMs. `q` quits. With `--once`,
    /// prints one plain-text report over two samples `--interval` apart and exits. Exits 2 when
    /// the admin API cannot be reached or answers 401 (a token is needed).
    Top {
        /// The admin endpoint (`gateway.admin`), `HOST:PORT`.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: String,
        /// File holding the admin token (`gateway.admin_token`); else the `SIMGATE_ADMIN_TOKEN`
        /// environment variable, if set.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Time between polls: `500ms`, `1s`, `2m`.
        #[arg(long, default_value = "1s", value_parser = simgate::top::parse_interval)]
        interval: Duration,
        /// Print one report (two samples `--interval` apart) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref(), cli.log_format);
    match cli.command {
        Command::Run { config } => match simgate::control::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("simgate: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check { config } => match simgate::config::load_plan(&config) {
            Ok(plan) => {
                // Allowed, but worth a word (e.g. a secret written inline): `path: message`.
                for warning in &plan.warnings {
                    eprintln!("warning: {warning}");
                }
                println!(
                    "{}: ok ({} listener(s), {} destination(s), {} group(s), {} SIM(s), \
                     {} shard(s), at most {} device connections{})",
                    config.display(),
                    plan.listeners.len(),
                    plan.destinations.len(),
                    plan.groups.len(),
                    plan.sims.len(),
                    plan.gateway.shards,
                    plan.gateway.max_connections,
                    plan.radius.as_ref().map_or(String::new(), |r| format!(
                        ", RADIUS accounting on {}",
                        r.bind
                    ))
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid configuration", config.display());
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Demo {
            connections,
            body_size,
            rate,
            duration,
            shards,
            http1,
        } => {
            let opts = simgate::demo::DemoOptions {
                connections: connections.max(1),
                body_size,
                rate,
                duration: duration.map(Duration::from_secs),
                shards,
                http2: !http1,
            };
            match simgate::demo::run(&opts) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("simgate demo: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Top {
            admin,
            token_file,
            interval,
            once,
        } => {
            let token = match simgate::top::load_token(
                token_file.as_deref(),
                std::env::var("SIMGATE_ADMIN_TOKEN").ok(),
            ) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("simgate top: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = simgate::top::Options {
                admin: simgate::top::Admin { addr: admin, token },
                interval,
                once,
            };
            match simgate::top::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("simgate top: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Version => {
            println!("simgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

fn init_logging(filter: Option<&str>, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = filter
        .map(tracing_subscriber::EnvFilter::new)
        .or_else(|| tracing_subscriber::EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colour codes only where a person reads them: a file or a pipe gets plain text.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
