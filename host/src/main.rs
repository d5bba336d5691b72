use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flux_gateway::bus::KafkaBus;
use flux_gateway::config::{Config, LogFormat};
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
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Directory of plugin `.wasm` files.
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Run the simulated upstream services on the embedded bus.
    #[arg(long)]
    demo: bool,
    /// Log format.
    #[arg(long, value_parser = ["human", "json"])]
    log_format: Option<String>,
    /// Window within which a repeated command is dropped, in milliseconds.
    #[arg(long)]
    dedupe_window_ms: Option<u64>,
    /// Kafka bootstrap servers: use the Kafka bus instead of the embedded one.
    #[arg(long, global = true)]
    brokers: Option<String>,
    /// This node's id (unique per gateway node; names its consumer groups).
    #[arg(long)]
    node_id: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the simulated upstream services (weather, crypto, news, stocks) against a Kafka
    /// broker, as their own process.
    Sim,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(dir) = cli.plugin_dir {
        config.plugin_dir = dir;
    }
    if let Some(format) = cli.log_format.as_deref() {
        config.log_format = if format == "json" {
            LogFormat::Json
        } else {
            LogFormat::Human
        };
    }
    if let Some(window) = cli.dedupe_window_ms {
        config.dedupe_window_ms = window;
    }
    config.demo.enabled |= cli.demo;
    if let Some(brokers) = cli.brokers {
        config.kafka.brokers = brokers;
    }
    if let Some(node_id) = cli.node_id {
        config.kafka.node_id = Some(node_id);
    }

    let filter = EnvFilter::try_from_env("FLUX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Human => logs.init(),
    }

    if let Some(Command::Sim) = cli.command {
        return run_sim(config).await;
    }

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    // Scripts and tests read this line to find the port.
    println!("flux-gateway listening on http://{address}");
    std::io::stdout().flush()?;

    flux_gateway::run(listener, config, shutdown_signal()).await?;
    Ok(())
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
