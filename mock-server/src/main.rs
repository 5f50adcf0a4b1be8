//! The `ota-mock-server` binary: parses arguments and runs the mock server until a signal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ota_mock_server::{Catalog, MockServer, TlsConfig, demo};

#[derive(Debug, Parser)]
#[command(
    name = "ota-mock-server",
    about = "A faithful, scriptable mock of the Alpha2 update server",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8010")]
    listen: SocketAddr,
    /// The catalog file to serve.
    #[arg(long, required = true)]
    catalog: Option<PathBuf>,
    /// Base URL for patch links, if not the listening address.
    #[arg(long)]
    public_url: Option<String>,
    /// Answer GET /oauth/token with 405, like newer servers.
    #[arg(long)]
    token_post_only: bool,
    #[command(flatten)]
    tls: TlsArgs,
    /// Log debug messages too.
    #[arg(long, short)]
    verbose: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// HTTPS, when both files are given.
#[derive(Debug, clap::Args)]
struct TlsArgs {
    /// Serve HTTPS with this PEM certificate chain (the server's certificate first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of the --tls-cert certificate.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn load(&self) -> anyhow::Result<Option<TlsConfig>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsConfig::from_pem_files(cert, key)?)),
            (None, None) => Ok(None),
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate (or reuse) a reproducible demo catalog in DIR and serve it.
    Demo {
        /// Directory for the catalog and the firmware versions.
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8010")]
        listen: SocketAddr,
        /// Size of the demo firmware file in bytes.
        #[arg(long, default_value_t = demo::DEFAULT_SIZE)]
        size: usize,
        /// Answer GET /oauth/token with 405, like newer servers.
        #[arg(long)]
        token_post_only: bool,
        /// Sign patch metadata with DIR/vendor.key (made with DIR/vendor.pub if absent).
        #[arg(long)]
        sign: bool,
        #[command(flatten)]
        tls: TlsArgs,
        /// Log debug messages too.
        #[arg(long, short)]
        verbose: bool,
    },
}

/// A minimal logger that writes to stderr, so stdout carries only the `listening on` line.
#[derive(Debug)]
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("[{} {}] {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let verbose = match &args.command {
        Some(Command::Demo { verbose, .. }) => *verbose || args.verbose,
        None => args.verbose,
    };
    log::set_logger(&LOGGER).map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    log::set_max_level(if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });

    let (catalog_path, listen, token_post_only, tls) = match &args.command {
        Some(Command::Demo {
            dir,
            listen,
            size,
            token_post_only,
            sign,
            tls,
            ..
        }) => {
            let catalog = if *sign {
                let (catalog, key) = demo::generate_signed(dir, *size)?;
                // On stderr, since stdout carries only the `listening on` line.
                eprintln!(
                    "patch metadata is signed with {}; the public key {} is in {}",
                    key.secret.display(),
                    key.public,
                    key.public_file.display()
                );
                catalog
            } else {
                demo::generate(dir, *size)?
            };
            (catalog, *listen, *token_post_only, tls.load()?)
        }
        None => (
            args.catalog.clone().context("--catalog is required")?,
            args.listen,
            args.token_post_only,
            args.tls.load()?,
        ),
    };
    let mut catalog = Catalog::load(&catalog_path)?;
    if token_post_only {
        catalog.set_token_get(false);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(serve(catalog, listen, args.public_url.as_deref(), tls))
}

async fn serve(
    catalog: Catalog,
    listen: SocketAddr,
    public_url: Option<&str>,
    tls: Option<TlsConfig>,
) -> anyhow::Result<()> {
    let server = match tls {
        Some(tls) => MockServer::bind_tls_with_public_url(catalog, listen, public_url, tls).await?,
        None => MockServer::bind_with_public_url(catalog, listen, public_url).await?,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", server.uri()).context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")?;
    drop(stdout);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for SIGINT")?,
        _ = terminate.recv() => {}
    }
    log::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
