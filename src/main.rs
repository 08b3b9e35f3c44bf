//! The `mailwarden` command: thin wrapper over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailwarden::cli;
use mailwarden::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "mailwarden",
    version,
    about = "SMTP filtering proxy in front of your MTA"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the proxy: accept SMTP, filter, relay to the upstream (or the local Maildir).
    Serve {
        /// Configuration file.
        #[arg(long, short = 'c', default_value = "mailwarden.toml")]
        config: PathBuf,
    },
    /// Show the verdict for message files (or standard input with "-"), as the proxy would.
    /// Exit code: 0 accept, 1 tag, 2 reject or other refusal, 3 error.
    Scan(cli::scan::ScanOptions),
    /// Train the classifier on your own mail: --spam or --ham PATH..., --forget PATH...,
    /// or --stats. Paths: message files, Maildirs, directories, mbox files.
    Learn(cli::learn::LearnOptions),
    /// Rule file tools.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Compile the rules and print errors and warnings with file:line; exit 1 on any error.
    Check {
        /// Configuration file (default: mailwarden.toml if present, else built-in defaults).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Also list every skipped rule.
        #[arg(long, short = 'v')]
        verbose: bool,
        /// Rule files or directories (default: rules.paths from the config).
        paths: Vec<PathBuf>,
    },
    /// Fit rule scores to your own spam and ham (logistic regression, cross-validated);
    /// prints `score` lines for e.g. rules/90_scores.cf. Exit code: 0 done, 2 error.
    Fit(cli::fit::FitOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Serve { config } => serve(&config),
        Commands::Scan(opts) => {
            init_logging("warn");
            ExitCode::from(cli::scan::run(&opts))
        }
        Commands::Learn(opts) => {
            init_logging("warn");
            ExitCode::from(cli::learn::run(&opts))
        }
        Commands::Rules {
            command:
                RulesCommand::Check {
                    config,
                    verbose,
                    paths,
                },
        } => {
            init_logging("warn");
            ExitCode::from(cli::rules::check(config.as_deref(), &paths, verbose))
        }
        Commands::Rules {
            command: RulesCommand::Fit(opts),
        } => {
            init_logging("warn");
            ExitCode::from(cli::fit::run(&opts))
        }
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            let problems = e.to_string();
            if problems.contains('\n') {
                eprintln!("mailwarden: configuration errors (fix each, then start again):");
                for line in problems.lines() {
                    eprintln!("  {line}");
                }
            } else {
                eprintln!("mailwarden: configuration error: {problems}");
            }
            return ExitCode::from(2);
        }
    };
    init_logging_as(&config.log.level, config.log.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailwarden: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mailwarden::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    init_logging_as(level, LogFormat::Human);
}

/// Logs go to stderr (journald / docker logs pick them up): readable lines, or one JSON
/// object per line (`[log] format = "json"`) for log shippers.
fn init_logging_as(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
