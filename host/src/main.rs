use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flux_gateway::Listeners;
use flux_gateway::auth::{self, TokenRequest};
use flux_gateway::bus::KafkaBus;
use flux_gateway::config::{Config, LogFormat, Overrides};
use flux_gateway::fleet;
use flux_gateway::fleet::cli::PluginCommand;
use flux_gateway::metrics::Metrics;
use flux_gateway::sim;
use tokio::task::JoinSet;
use tracing_subscriber::EnvFilter;

/// Flux Gateway: Socket.IO in front, domain plugins (WebAssembly components) behind.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Subcommand)]
enum Command {
    /// Write and ship plugins: new, check; to every node over Kafka: keygen, publish, promote,
    /// remove, status.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Run the simulated upstream services (weather, crypto, news, stocks) against a Kafka
    /// broker, as their own process.
    Sim,
    /// Print an HS256 token signed with `[auth] hs256_secret` (or `FLUX_AUTH_HS256_SECRET`),
    /// for local testing.
    Token {
        /// The user: the token's `sub`.
        #[arg(long)]
        sub: String,
        /// A scope to grant; repeat for several.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// `aud` claim (default: `[auth] audience`).
        #[arg(long)]
        aud: Option<String>,
        /// `iss` claim (default: `[auth] issuer`).
        #[arg(long)]
        iss: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(serve());
    // What is still running is dropped now. A Kafka consumer closes by leaving its group,
    // which waits for the broker — forever when the brokers went first: bounded, so a node
    // always exits (its offsets were committed while it ran; at least once either way).
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    outcome
}

/// How long the process waits, after serving, for its tasks and Kafka clients to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

async fn serve() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref(), cli.overrides)?;

    let filter = EnvFilter::try_from_env("FLUX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Human => logs.init(),
    }

    match cli.command {
        Some(Command::Sim) => return run_sim(config).await,
        Some(Command::Plugin { command }) => return fleet::cli::run(command, &config).await,
        Some(Command::Token {
            sub,
            scopes,
            ttl_secs,
            aud,
            iss,
        }) => {
            let secret =
                config.auth.hs256_secret.as_ref().context(
                    "no HS256 secret: set [auth] hs256_secret or FLUX_AUTH_HS256_SECRET",
                )?;
            let request = TokenRequest {
                subject: sub,
                scopes,
                ttl: Duration::from_secs(ttl_secs),
                audience: aud.or(config.auth.audience.clone()),
                issuer: iss.or(config.auth.issuer.clone()),
            };
            println!(
                "{}",
                auth::mint_hs256(secret, &config.auth.scope_claim, &request)?
            );
            return Ok(());
        }
        None => {}
    }

    let public = bind(&config.listen).await?;
    let admin = match config.admin.listen.trim() {
        "" => None,
        address => Some(bind(address).await?),
    };
    // Scripts and tests read these lines to find the ports.
    println!("flux-gateway listening on http://{}", public.local_addr()?);
    if let Some(admin) = &admin {
        println!("flux-gateway admin on http://{}", admin.local_addr()?);
    }
    std::io::stdout().flush()?;

    flux_gateway::run(Listeners { public, admin }, config, shutdown_signal()).await?;
    Ok(())
}

async fn bind(address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))
}

/// The simulated upstream services as a process of their own, on the Kafka bus.
async fn run_sim(config: Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.kafka.enabled(),
        "the simulated services need --brokers"
    );
    let metrics = Arc::new(Metrics::default());
    let bus = Arc::new(KafkaBus::new(&config.kafka, "demo-services", metrics)?);
    let mut tasks = JoinSet::new();
    let topics = sim::TOPICS.iter().map(|t| (*t).to_owned()).collect();
    tasks.spawn(KafkaBus::ensure_topics(config.kafka.clone(), topics));
    sim::start(bus.clone(), &config.demo, &mut tasks);
    println!("flux-gateway sim running against {}", config.kafka.brokers);
    std::io::stdout().flush()?;
    shutdown_signal().await;
    tasks.shutdown().await;
    bus.flush(Duration::from_secs(5));
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
