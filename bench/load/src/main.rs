//! `flux-load`: opens thousands of Socket.IO clients against the Flux gateway (or its Node.js
//! peer), makes them behave like Flux browsers, feeds records through Kafka and reports what
//! arrived: deliveries per second, end-to-end latency from the record's `sentAtUs` to the
//! client, errors, disconnects, and the server's resident memory.
//!
//! # Layout
//! - [`client`]: a minimal Socket.IO client over the websocket transport.
//! - [`feed`]: the Kafka record source, stamping each record with its send time.
//! - [`floor`]: the same clients written to by threads that do nothing else: the machine's floor.
//! - [`histogram`]: the lock-free latency histogram every client records into.
//! - [`scenario`]: the scenarios and their report.

mod client;
mod feed;
mod floor;
mod histogram;
mod scenario;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// The server's Socket.IO address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub server: SocketAddr,
    /// Kafka bootstrap servers the server consumes from.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Process id of the server, whose resident memory is sampled.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Name of the server in the report.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Connections being opened at once while ramping up.
    #[arg(long, default_value_t = 200)]
    pub ramp_concurrency: usize,
    /// Fail (exit 1) unless every expected event arrived with no error and no disconnect.
    #[arg(long)]
    pub require_complete: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub scenario: scenario::Scenario,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    raise_fd_limit()?;
    if let scenario::Scenario::FloorServer(floor) = cli.scenario {
        return floor::serve(floor).map(|()| ExitCode::SUCCESS);
    }
    let report = scenario::run(&cli).await?;
    if cli.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    if cli.require_complete
        && let Err(shortfall) = report.complete()
    {
        eprintln!("incomplete: {shortfall}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Every client is a file descriptor: lift the soft limit to the hard one, and the hard one
/// too when allowed (as root).
fn raise_fd_limit() -> anyhow::Result<()> {
    const WANTED: u64 = 1 << 20;
    use rlimit::Resource;
    if Resource::NOFILE.set(WANTED, WANTED).is_err() {
        rlimit::increase_nofile_limit(WANTED)?;
    }
    Ok(())
}
