use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ota_agent::config::{self, Config};
use ota_agent::cycle::Agent;
use ota_agent::notify::Notifier;
use ota_agent::redact::printable;
use ota_agent::status::Status;
use ota_agent::store::Store;
use ota_agent::{Shutdown, daemon, error_chain, events, logger, patch};

/// Over-the-air update agent for UBTech Alpha2 robots.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, env = "OTA_AGENT_LOG", default_value = "info")]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (what systemd starts).
    Run,
    /// One full update cycle for every package, then exit: 0 when all is up to date and reported.
    Check,
    /// Show installed versions, updates under way and callbacks waiting.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print the agent's progress as it happens, as the robot's apps see it, until the agent stops.
    Watch {
        /// The raw JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// The socket to read instead of the config's `events_socket` (the config is not read).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Record which version a managed file is now, after it was changed by hand or the agent
    /// lost track of it (stop the agent first).
    Adopt {
        /// The package, as `name/file_name` (or `name` when it manages one file).
        package: String,
        /// The version code the file is.
        version: String,
    },
    /// Apply a bsdiff 4.x patch, with the reference bspatch's arguments.
    Bspatch {
        oldfile: PathBuf,
        newfile: PathBuf,
        patchfile: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logger::init(cli.log_level);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ota-agent: {}", printable(&error_chain(e.as_ref())));
            if is_newer_state(&e) {
                // systemd must not restart into the same refusal (RestartPreventExitStatus=).
                ExitCode::from(ota_agent::EXIT_NEWER_STATE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn is_newer_state(e: &anyhow::Error) -> bool {
    use ota_agent::store::StoreError;
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<StoreError>(),
            Some(StoreError::NewerFormat { .. })
        ) || matches!(
            cause.downcast_ref::<ota_agent::Error>(),
            Some(ota_agent::Error::Store(StoreError::NewerFormat { .. }))
        )
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// With a handler for SIGXFSZ, a write past a file-size limit fails with EFBIG (handled like a
/// full disk) instead of killing the process. Must run inside the runtime.
fn survive_file_size_limits() -> Option<tokio::signal::unix::Signal> {
    let xfsz = tokio::signal::unix::SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw());
    tokio::signal::unix::signal(xfsz).ok()
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Bspatch {
            oldfile,
            newfile,
            patchfile,
        } => {
            patch::bspatch_files(&oldfile, &newfile, &patchfile)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Adopt { package, version } => {
            let config = Config::load(&cli.config)?;
            let adopted = ota_agent::adopt::adopt(&config, &package, &version)?;
            println!(
                "{}: {} is version {} now (sha256 {}){}",
                adopted.package,
                config
                    .packages
                    .iter()
                    .find(|p| p.key() == adopted.package)
                    .map_or_else(String::new, |p| p.path.display().to_string()),
                adopted.version,
                adopted.sha256,
                if adopted.recorded_on_file {
                    ""
                } else {
                    "; its file system keeps no extended attributes, so only the agent's state records it"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let config = Config::load(&cli.config)?;
            let state = Store::peek(&config.agent.state_dir)?;
            let status = Status::new(&config, &state);
            if json {
                let json = serde_json::to_string_pretty(&status)?;
                println!("{}", ota_agent::redact::json_printable(json));
            } else {
                print!("{}", status.to_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { json, socket } => {
            let socket = match socket {
                Some(path) => path,
                None => Config::load(&cli.config)?.agent.events_socket,
            };
            events::watch(&socket, json, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let config = Config::load(&cli.config)?;
            runtime()?.block_on(async {
                let _xfsz = survive_file_size_limits();
                let mut agent = Agent::open(config, Shutdown::never(), Arc::new(Notifier::none()))?;
                let results = agent.cycle_all().await;
                let mut ok = true;
                for (key, result) in &results {
                    match result {
                        Ok(outcome) => {
                            ok &= outcome.is_success();
                            // The outcome and the error may carry the server's words.
                            println!("{key}: {}", printable(&outcome.to_string()));
                        }
                        Err(e) => {
                            ok = false;
                            println!("{key}: check failed: {}", printable(&error_chain(e)));
                        }
                    }
                }
                if !agent.state.outbox.is_empty() {
                    ok = false;
                    println!(
                        "{} result(s) could not be sent yet; they stay queued",
                        agent.state.outbox.len()
                    );
                }
                Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            })
        }
        Command::Run => {
            let config = Config::load(&cli.config)?;
            daemon::tune_allocator();
            runtime()?.block_on(async {
                let _xfsz = survive_file_size_limits();
                let (stop, shutdown) = Shutdown::new();
                // Registered before any work: a signal during the start-up (the state read and
                // reconciled, the files hashed) stops at the first safe point too, instead of
                // killing the process by the signal's default action.
                let signals = StopSignals::register();
                tokio::spawn(async move {
                    signals.wait().await;
                    let _ = stop.send(true);
                });
                daemon::run(config, shutdown, Arc::new(Notifier::from_env())).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP all stop the daemon at a safe point, with its progress saved. A
/// SIGHUP (a closed terminal, a `systemctl kill -s HUP`, a reload by habit) would otherwise
/// kill it mid-download, and systemd counts that death as a clean exit; the unit's
/// `Restart=always` starts it again, with its config read anew.
struct StopSignals(
    Option<(
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    )>,
);

impl StopSignals {
    /// Takes SIGTERM, SIGINT and SIGHUP from their default actions now; must run in the runtime.
    fn register() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => StopSignals(Some((term, int, hup))),
            _ => StopSignals(None),
        }
    }

    async fn wait(self) {
        let Some((mut term, mut int, mut hup)) = self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM received"),
            _ = int.recv() => log::info!("SIGINT received"),
            _ = hup.recv() => log::info!("SIGHUP received; stopping (systemd starts the agent again)"),
        }
    }
}
