//! The scenarios of the benchmark and the report they produce.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{Client, ClientError, Event, integer_field};
use crate::feed::{Feed, Record, now_micros};
use crate::histogram::Histogram;
use crate::{Cli, floor};

const TICKER_TOPIC: &str = "crypto.service.event.ticker";
const WEATHER_TOPIC: &str = "weather.service.event.updated";
const TICKER_EVENT: &str = "cryptoTickerResponse";
/// After the feed stops, how long deliveries may keep arriving before the count is final.
pub(crate) const DRAIN: Duration = Duration::from_secs(10);
/// Loopback source addresses the clients are spread over (each has ~28k ephemeral ports).
const LOOPBACK_SOURCES: u8 = 8;

#[derive(Subcommand, Clone)]
pub enum Scenario {
    /// Every client in one room (`crypto.global`); ticker records at `rate` per second.
    Fanout {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// `per-city` clients in each of `cities` weather rooms; weather updates round-robin over
    /// the cities at `rate` per second.
    Rooms {
        #[arg(long, default_value_t = 1_000)]
        cities: usize,
        #[arg(long, default_value_t = 10)]
        per_city: usize,
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// `clients` connected and joined, then idle for `hold` seconds: memory per connection.
    Idle {
        #[arg(long, default_value_t = 20_000)]
        clients: usize,
        #[arg(long, default_value_t = 30.0)]
        hold: f64,
    },
    /// The floor: the same clients, written the same frames by threads that do nothing else
    /// (no broker, no server): what this machine's loopback and clients alone cost.
    Floor(floor::Floor),
    /// The floor's writing side, in the process `floor` starts.
    #[command(hide = true)]
    FloorServer(floor::Floor),
    /// A crowded city: `clients` clients all in one city send their location within
    /// `within-ms` (each in its own slot of that time) and must each be hydrated with the
    /// city's cached weather; then the city's weather is fed at `rate` per second for
    /// `seconds`, and every update must reach every one of them.
    Crowd {
        #[arg(long, default_value_t = 5_000)]
        clients: usize,
        #[arg(long, default_value_t = 1_000)]
        within_ms: u64,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// `clients` joined over `cities` cities drop their connections at once and reconnect
    /// within `within-ms`; each must be hydrated with its city's cached weather again.
    Storm {
        #[arg(long, default_value_t = 5_000)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        cities: usize,
        #[arg(long, default_value_t = 1_000)]
        within_ms: u64,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Self::Fanout { .. } => "fanout",
            Self::Rooms { .. } => "rooms",
            Self::Idle { .. } => "idle",
            Self::Crowd { .. } => "crowd",
            Self::Floor(_) | Self::FloorServer(_) => "floor",
            Self::Storm { .. } => "storm",
        }
    }
}

/// What a run found.
#[derive(Default)]
pub struct Report {
    pub label: String,
    pub scenario: &'static str,
    pub clients: usize,
    pub connected: u64,
    pub records: u64,
    pub expected: u64,
    pub delivered: u64,
    pub deliveries_per_sec: f64,
    pub latency_ms: Option<[f64; 4]>,
    pub errors: u64,
    pub disconnects: u64,
    pub feed_failed: u64,
    pub hydrated: u64,
    pub storm_ms: Option<f64>,
    /// Each client's time from sending its location (connecting first) to being hydrated.
    pub join_latency_ms: Option<[f64; 4]>,
    /// CPU the server used while the crowd joined.
    pub join_cpu_sec: Option<f64>,
    pub rss_base_kb: Option<u64>,
    pub rss_peak_kb: Option<u64>,
    pub rss_end_kb: Option<u64>,
    /// CPU the server and the load generator used while records were fed and delivered.
    pub server_cpu_sec: Option<f64>,
    pub load_cpu_sec: Option<f64>,
}

impl Report {
    pub fn rss_per_connection_kb(&self) -> Option<f64> {
        let (base, end) = (self.rss_base_kb?, self.rss_end_kb?);
        (self.connected > 0).then(|| (end as f64 - base as f64) / self.connected as f64)
    }

    pub fn server_cpu_per_delivery_us(&self) -> Option<f64> {
        let cpu = self.server_cpu_sec?;
        (self.delivered > 0).then(|| cpu * 1e6 / self.delivered as f64)
    }

    /// Every client connected and every expected event arrived, with no error or drop.
    pub fn complete(&self) -> Result<(), String> {
        let mut shortfalls = Vec::new();
        if self.connected < self.clients as u64 {
            shortfalls.push(format!("{} of {} connected", self.connected, self.clients));
        }
        if self.delivered < self.expected {
            shortfalls.push(format!("{} of {} delivered", self.delivered, self.expected));
        }
        if matches!(self.scenario, "storm" | "crowd") && self.hydrated < self.clients as u64 {
            shortfalls.push(format!("{} of {} hydrated", self.hydrated, self.clients));
        }
        for (count, what) in [
            (self.errors, "errors"),
            (self.disconnects, "disconnects"),
            (self.feed_failed, "records the broker refused"),
        ] {
            if count > 0 {
                shortfalls.push(format!("{count} {what}"));
            }
        }
        if shortfalls.is_empty() {
            Ok(())
        } else {
            Err(shortfalls.join(", "))
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let quantiles = |ms: Option<[f64; 4]>| {
            ms.map(
                |[p50, p99, p999, max]| json!({ "p50": p50, "p99": p99, "p999": p999, "max": max }),
            )
        };
        let latency = quantiles(self.latency_ms);
        json!({
            "label": self.label,
            "scenario": self.scenario,
            "clients": self.clients,
            "connected": self.connected,
            "records": self.records,
            "expected": self.expected,
            "delivered": self.delivered,
            "deliveriesPerSec": self.deliveries_per_sec.round(),
            "latencyMs": latency,
            "errors": self.errors,
            "disconnects": self.disconnects,
            "feedFailed": self.feed_failed,
            "hydrated": self.hydrated,
            "stormMs": self.storm_ms,
            "joinLatencyMs": quantiles(self.join_latency_ms),
            "joinCpuSec": self.join_cpu_sec,
            "joinCpuUsPerClient": self.join_cpu_sec.map(|cpu| cpu * 1e6 / self.clients.max(1) as f64),
            "rssBaseKb": self.rss_base_kb,
            "rssPeakKb": self.rss_peak_kb,
            "rssEndKb": self.rss_end_kb,
            "rssPerConnectionKb": self.rss_per_connection_kb(),
            "serverCpuSec": self.server_cpu_sec,
            "loadCpuSec": self.load_cpu_sec,
            "serverCpuUsPerDelivery": self.server_cpu_per_delivery_us(),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} / {}", self.label, self.scenario)?;
        writeln!(
            f,
            "  clients      {} connected of {}",
            self.connected, self.clients
        )?;
        if self.records > 0 {
            writeln!(
                f,
                "  deliveries   {} of {} expected ({} records), {:.0}/s",
                self.delivered, self.expected, self.records, self.deliveries_per_sec
            )?;
        }
        if let Some([p50, p99, p999, max]) = self.latency_ms {
            writeln!(
                f,
                "  latency ms   p50 {p50:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1}"
            )?;
        }
        if let Some(storm) = self.storm_ms {
            writeln!(
                f,
                "  storm        {} of {} hydrated, last after {storm:.0} ms",
                self.hydrated, self.clients
            )?;
        }
        if let Some([p50, p99, p999, max]) = self.join_latency_ms {
            writeln!(
                f,
                "  joins ms     p50 {p50:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1}"
            )?;
        }
        if let Some(cpu) = self.join_cpu_sec {
            writeln!(f, "  join CPU     server {cpu:.2} s")?;
        }
        writeln!(
            f,
            "  errors {}  disconnects {}  refused records {}",
            self.errors, self.disconnects, self.feed_failed
        )?;
        if let (Some(server), Some(load)) = (self.server_cpu_sec, self.load_cpu_sec) {
            write!(
                f,
                "  CPU          server {server:.1} s, load generator {load:.1} s"
            )?;
            if let Some(per) = self.server_cpu_per_delivery_us() {
                write!(f, ", server {per:.2} µs per delivery")?;
            }
            writeln!(f)?;
        }
        if let (Some(base), Some(peak)) = (self.rss_base_kb, self.rss_peak_kb) {
            write!(f, "  server RSS   base {base} KB, peak {peak} KB")?;
            if let Some(per) = self.rss_per_connection_kb() {
                write!(f, ", {per:.1} KB per connection")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Which events a run measures.
#[derive(Clone, Copy)]
pub(crate) enum Measured {
    Ticker,
    Weather,
}

impl Measured {
    fn matches(self, event: &str) -> bool {
        match self {
            Self::Ticker => event == TICKER_EVENT,
            Self::Weather => event.starts_with("weather.") && event.ends_with(".update"),
        }
    }
}

/// Counters every client task updates.
pub(crate) struct Tally {
    measured: Measured,
    /// Events stamped before this (µs since the epoch) are warm-up, not measured.
    pub(crate) window_start: AtomicU64,
    last_receipt: AtomicU64,
    latency: Histogram,
    pub(crate) delivered: AtomicU64,
    pub(crate) connected: AtomicU64,
    pub(crate) errors: AtomicU64,
    disconnects: AtomicU64,
    hydrated: AtomicU64,
    pub(crate) stopping: AtomicBool,
}

impl Tally {
    pub(crate) fn new(measured: Measured) -> Self {
        Self {
            measured,
            window_start: AtomicU64::new(u64::MAX),
            last_receipt: AtomicU64::new(0),
            latency: Histogram::default(),
            delivered: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            hydrated: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// Looks at one event a client received; true when it is a measured one.
    pub(crate) fn observe(&self, event: Event<'_>) -> bool {
        if event.name == "error" {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if !self.measured.matches(event.name) {
            return false;
        }
        if let Some(sent) = integer_field(event.frame, "sentAtUs")
            && sent >= self.window_start.load(Ordering::Relaxed)
        {
            let now = now_micros();
            self.delivered.fetch_add(1, Ordering::Relaxed);
            self.latency.record(now.saturating_sub(sent));
            self.last_receipt.fetch_max(now, Ordering::Relaxed);
        }
        true
    }

    fn client_failed(&self, error: &ClientError) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        match error {
            ClientError::Closed | ClientError::WebSocket(_) => &self.disconnects,
            _ => &self.errors,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Its counts into `report`; given when events began (µs since the epoch), the deliveries
    /// per second from then to the last receipt.
    pub(crate) fn report(&self, report: &mut Report, events_from: Option<u64>) {
        report.connected = self.connected.load(Ordering::Relaxed);
        report.delivered = self.delivered.load(Ordering::Relaxed);
        report.hydrated = self.hydrated.load(Ordering::Relaxed);
        report.errors = self.errors.load(Ordering::Relaxed);
        report.disconnects = self.disconnects.load(Ordering::Relaxed);
        report.latency_ms = self.latency_ms();
        let span = events_from.map_or(0, |from| {
            self.last_receipt
                .load(Ordering::Relaxed)
                .saturating_sub(from)
        });
        if span > 0 {
            report.deliveries_per_sec = report.delivered as f64 / (span as f64 / 1e6);
        }
    }

    fn latency_ms(&self) -> Option<[f64; 4]> {
        let ms = |q| self.latency.quantile(q).map(|us| us as f64 / 1000.0);
        Some([ms(0.5)?, ms(0.99)?, ms(0.999)?, ms(1.0)?])
    }
}

/// How clients reach the server and say who they are.
struct Dialer {
    server: SocketAddr,
}

/// The address client `index` connects from: spread over loopback addresses for a loopback
/// server (each has ~28k ephemeral ports), any address otherwise.
pub(crate) fn loopback_source(server: SocketAddr, index: usize) -> IpAddr {
    if server.ip().is_loopback() && server.is_ipv4() {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (index % LOOPBACK_SOURCES as usize) as u8,
        ))
    } else if server.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    }
}

impl Dialer {
    /// Connects and does what a Flux page does first: `getUserId`, then `userLocationUpdate`
    /// for its city (which joins the city's weather room and the global rooms). Also says
    /// whether a measured event (the room's hydration) arrived during the join.
    async fn join(
        &self,
        index: usize,
        city: &str,
        tally: &Tally,
    ) -> Result<(Client, bool), ClientError> {
        let mut client = Client::connect(self.server, loopback_source(self.server, index)).await?;
        let mut hydrated = false;
        let mut observe = |event: Event<'_>| hydrated |= tally.observe(event);
        let user = client.emit_with_ack("getUserId", "", &mut observe).await?;
        let user = user.trim_start_matches("[\"").trim_end_matches("\"]");
        let location = json!({
            "city": city, "region": city, "country": "IN", "lat": "28.61", "lon": "77.20",
            "ip": "10.0.0.1",
        });
        client
            .emit_with_ack(
                "userLocationUpdate",
                &format!("{location},\"{user}\""),
                &mut observe,
            )
            .await?;
        Ok((client, hydrated))
    }
}

/// Keeps a joined client listening (answering pings, counting events) until `leave` fires.
async fn listen(
    mut client: Client,
    mut hydrated: bool,
    tally: &Tally,
    mut leave: watch::Receiver<bool>,
) {
    let mut observe = |event: Event<'_>| {
        if tally.observe(event) && !hydrated {
            hydrated = true;
            tally.hydrated.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            _ = leave.wait_for(|left| *left) => break,
            received = client.next_event(&mut observe) => if let Err(error) = received {
                tally.client_failed(&error);
                return;
            }
        }
    }
    client.close().await;
}

fn city_name(index: usize) -> String {
    format!("City {index}")
}

/// Samples the server's resident memory four times a second, keeping the peak and the latest.
struct RssSampler {
    pid: Option<u32>,
    peak: AtomicU64,
    latest: AtomicU64,
}

impl RssSampler {
    fn start(pid: Option<u32>) -> Arc<Self> {
        let sampler = Arc::new(Self {
            pid,
            peak: AtomicU64::new(0),
            latest: AtomicU64::new(0),
        });
        if pid.is_some() {
            let sampling = sampler.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(kb) = sampling.read() {
                        sampling.latest.store(kb, Ordering::Relaxed);
                        sampling.peak.fetch_max(kb, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        }
        sampler
    }

    /// VmRSS of the server now, in KB.
    fn read(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn fill(&self, report: &mut Report) {
        if self.pid.is_some() {
            report.rss_peak_kb = Some(self.peak.load(Ordering::Relaxed));
            report.rss_end_kb = self.read();
        }
    }
}

/// CPU time the server and this process use over a stretch of a run.
pub(crate) struct CpuWindow {
    server_pid: Option<u32>,
    server: Option<f64>,
    load: Option<f64>,
}

impl CpuWindow {
    pub(crate) fn start(server_pid: Option<u32>) -> Self {
        Self {
            server_pid,
            server: server_pid.and_then(|pid| cpu_seconds(&pid.to_string())),
            load: cpu_seconds("self"),
        }
    }

    /// The server's CPU since the window started.
    fn seconds(&self) -> Option<f64> {
        let now = cpu_seconds(&self.server_pid?.to_string())?;
        Some(now - self.server?)
    }

    pub(crate) fn finish(self, report: &mut Report) {
        let used = |before: Option<f64>, now: Option<f64>| Some(now? - before?);
        report.server_cpu_sec = used(
            self.server,
            self.server_pid
                .and_then(|pid| cpu_seconds(&pid.to_string())),
        );
        report.load_cpu_sec = used(self.load, cpu_seconds("self"));
    }
}

/// User plus system CPU time of a process, from `/proc/PID/stat` (fields 14 and 15, in
/// USER_HZ ticks, which Linux fixes at 100 per second for user space).
fn cpu_seconds(pid: &str) -> Option<f64> {
    const TICKS_PER_SEC: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / TICKS_PER_SEC)
}

pub async fn run(cli: &Cli) -> anyhow::Result<Report> {
    if let Scenario::Floor(floor) = cli.scenario {
        let mut report = Report {
            label: "floor".into(),
            scenario: "floor",
            ..Report::default()
        };
        floor::run(&mut report, floor, cli.ramp_concurrency).await?;
        return Ok(report);
    }
    let feed = Feed::new(&cli.brokers)?;
    feed.prepare(&[TICKER_TOPIC, WEATHER_TOPIC]).await?;
    let rss = RssSampler::start(cli.server_pid);
    let dialer = Arc::new(Dialer { server: cli.server });
    let mut report = Report {
        label: cli.label.clone(),
        scenario: cli.scenario.name(),
        rss_base_kb: rss.read(),
        ..Report::default()
    };
    match cli.scenario.clone() {
        Scenario::Fanout {
            clients,
            rate,
            seconds,
        } => {
            report.clients = clients;
            let cities = vec![city_name(0)];
            let tally = Arc::new(Tally::new(Measured::Ticker));
            let crowd = Crowd::join(&dialer, &tally, clients, &cities, cli.ramp_concurrency).await;
            let ticks = |n: u64| Record {
                topic: TICKER_TOPIC,
                key: "BTC-USD".into(),
                fields: format!(
                    "\"symbol\":\"BTC-USD\",\"price\":{}.5,\"seq\":{n}",
                    90_000 + n % 1000
                ),
            };
            let connected = tally.connected.load(Ordering::Relaxed);
            let cpu = CpuWindow::start(cli.server_pid);
            let sent = measure(&feed, &tally, rate, seconds, ticks, |_| connected).await;
            cpu.finish(&mut report);
            report.records = sent.records;
            report.expected = sent.expected;
            crowd.leave(&tally).await;
            finish(&mut report, &tally, &feed, Some(sent.started));
        }
        Scenario::Rooms {
            cities,
            per_city,
            rate,
            seconds,
        } => {
            report.clients = cities * per_city;
            let names: Vec<String> = (0..cities).map(city_name).collect();
            let tally = Arc::new(Tally::new(Measured::Weather));
            let crowd = Crowd::join(
                &dialer,
                &tally,
                report.clients,
                &names,
                cli.ramp_concurrency,
            )
            .await;
            let updates = |n: u64| weather_update(&names[n as usize % names.len()], n);
            let members = crowd.members_per_city.clone();
            let cpu = CpuWindow::start(cli.server_pid);
            let sent = measure(&feed, &tally, rate, seconds, updates, |n| {
                members[n as usize % members.len()]
            })
            .await;
            cpu.finish(&mut report);
            report.records = sent.records;
            report.expected = sent.expected;
            crowd.leave(&tally).await;
            finish(&mut report, &tally, &feed, Some(sent.started));
        }
        Scenario::Idle { clients, hold } => {
            report.clients = clients;
            let names: Vec<String> = (0..100).map(city_name).collect();
            let tally = Arc::new(Tally::new(Measured::Weather));
            let crowd = Crowd::join(&dialer, &tally, clients, &names, cli.ramp_concurrency).await;
            tokio::time::sleep(Duration::from_secs_f64(hold)).await;
            rss.fill(&mut report);
            crowd.leave(&tally).await;
            finish(&mut report, &tally, &feed, None);
            return Ok(report);
        }
        Scenario::Crowd {
            clients,
            within_ms,
            rate,
            seconds,
        } => {
            report.clients = clients;
            let city = city_name(0);
            warm(&feed, std::slice::from_ref(&city)).await;
            let joins = Arc::new(Tally::new(Measured::Weather));
            let tally = Arc::new(Tally::new(Measured::Weather));
            let cpu = CpuWindow::start(cli.server_pid);
            let crowd = TimedJoins::run(
                &dialer,
                &joins,
                &tally,
                clients,
                std::slice::from_ref(&city),
                within_ms,
            )
            .await;
            report.join_cpu_sec = cpu.seconds();
            report.storm_ms = Some(crowd.all_hydrated_ms);
            report.join_latency_ms = joins.latency_ms();
            let hydrated = joins.hydrated.load(Ordering::Relaxed);
            let updates = |n: u64| weather_update(&city, n);
            let cpu = CpuWindow::start(cli.server_pid);
            let sent = measure(&feed, &tally, rate, seconds, updates, |_| hydrated).await;
            cpu.finish(&mut report);
            report.records = sent.records;
            report.expected = sent.expected;
            crowd.release(&tally).await;
            finish(&mut report, &tally, &feed, Some(sent.started));
            // Joining is counted by `joins`, the updates that followed by `tally`.
            report.connected = joins.connected.load(Ordering::Relaxed);
            report.hydrated = hydrated;
            report.errors += joins.errors.load(Ordering::Relaxed);
            report.disconnects += joins.disconnects.load(Ordering::Relaxed);
        }
        Scenario::Floor(_) | Scenario::FloorServer(_) => {
            unreachable!("the floor needs no broker: run above")
        }
        Scenario::Storm {
            clients,
            cities,
            within_ms,
        } => {
            report.clients = clients;
            storm(
                &mut report,
                &dialer,
                &feed,
                clients,
                cities,
                within_ms,
                cli.ramp_concurrency,
            )
            .await?;
        }
    }
    rss.fill(&mut report);
    Ok(report)
}

/// The clients of a run, each a task listening until told to leave.
struct Crowd {
    tasks: JoinSet<()>,
    leave: watch::Sender<bool>,
    members_per_city: Arc<Vec<u64>>,
}

impl Crowd {
    /// Connects `clients` clients, city `i % cities.len()` for client `i`, at most `ramp`
    /// handshakes at a time, and returns once each has joined or failed.
    async fn join(
        dialer: &Arc<Dialer>,
        tally: &Arc<Tally>,
        clients: usize,
        cities: &[String],
        ramp: usize,
    ) -> Self {
        let (leave, left) = watch::channel(false);
        let handshakes = Arc::new(Semaphore::new(ramp));
        let joined = Arc::new(Semaphore::new(0));
        let mut tasks = JoinSet::new();
        let mut members_per_city = vec![0; cities.len()];
        for index in 0..clients {
            let city = cities[index % cities.len()].clone();
            let (dialer, tally, handshakes, joined) = (
                dialer.clone(),
                tally.clone(),
                handshakes.clone(),
                joined.clone(),
            );
            let left = left.clone();
            tasks.spawn(async move {
                let permit = handshakes.acquire_owned().await.expect("never closed");
                let joining = dialer.join(index, &city, &tally).await;
                drop(permit);
                // Counted before the crowd is released, so the counts are final when it is.
                let joined_client = match joining {
                    Ok((client, hydrated)) => {
                        tally.connected.fetch_add(1, Ordering::Relaxed);
                        if hydrated {
                            tally.hydrated.fetch_add(1, Ordering::Relaxed);
                        }
                        Some((client, hydrated))
                    }
                    Err(error) => {
                        tally.client_failed(&error);
                        None
                    }
                };
                joined.add_permits(1);
                if let Some((client, hydrated)) = joined_client {
                    listen(client, hydrated, &tally, left).await;
                }
            });
        }
        // A client that fails still releases its place, so this always completes.
        let _ = joined.acquire_many(clients as u32).await;
        for (index, members) in members_per_city.iter_mut().enumerate() {
            *members = (index..clients).step_by(cities.len()).count() as u64;
        }
        Self {
            tasks,
            leave,
            members_per_city: Arc::new(members_per_city),
        }
    }

    async fn leave(mut self, tally: &Tally) {
        tally.stopping.store(true, Ordering::Relaxed);
        let _ = self.leave.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Sent {
    records: u64,
    expected: u64,
    started: u64,
}

/// Opens the measurement window, feeds records at `rate` for `seconds`, then waits until the
/// expected deliveries arrived or [`DRAIN`] passed.
async fn measure(
    feed: &Feed,
    tally: &Tally,
    rate: f64,
    seconds: f64,
    records: impl FnMut(u64) -> Record,
    receivers_of: impl Fn(u64) -> u64,
) -> Sent {
    let started = now_micros();
    tally.window_start.store(started, Ordering::Relaxed);
    let sent = feed
        .run(rate, Duration::from_secs_f64(seconds), records)
        .await;
    let expected = sent.iter().map(|&n| receivers_of(n)).sum();
    let deadline = Instant::now() + DRAIN;
    while tally.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Sent {
        records: sent.len() as u64,
        expected,
        started,
    }
}

/// What every scenario reports from its tally; given when records were first fed (µs since
/// the epoch), with its deliveries per second.
fn finish(report: &mut Report, tally: &Tally, feed: &Feed, fed_from: Option<u64>) {
    tally.report(report, fed_from);
    report.feed_failed = feed.failed();
}

/// Warms the cache with every city's weather, joins everyone, then drops every connection at
/// once and reconnects them all within `within_ms`; each must be hydrated again. The latency
/// reported is each client's, from the start of its reconnect to its hydration.
async fn storm(
    report: &mut Report,
    dialer: &Arc<Dialer>,
    feed: &Feed,
    clients: usize,
    cities: usize,
    within_ms: u64,
    ramp: usize,
) -> anyhow::Result<()> {
    let names: Vec<String> = (0..cities).map(city_name).collect();
    warm(feed, &names).await;
    let warm = Arc::new(Tally::new(Measured::Weather));
    let crowd = Crowd::join(dialer, &warm, clients, &names, ramp).await;
    let deadline = Instant::now() + HYDRATION_TIMEOUT;
    while warm.hydrated.load(Ordering::Relaxed) < clients as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (joined, hydrated) = (
        warm.connected.load(Ordering::Relaxed),
        warm.hydrated.load(Ordering::Relaxed),
    );
    crowd.leave(&warm).await;
    anyhow::ensure!(
        joined == clients as u64 && hydrated == clients as u64,
        "before the storm only {joined} of {clients} joined and {hydrated} were hydrated"
    );

    let tally = Arc::new(Tally::new(Measured::Weather));
    let storm = TimedJoins::run(dialer, &tally, &tally, clients, &names, within_ms).await;
    report.storm_ms = Some(storm.all_hydrated_ms);
    storm.release(&tally).await;
    finish(report, &tally, feed, None);
    Ok(())
}

/// The `n`th weather update for `city`, stamped when it is fed.
fn weather_update(city: &str, n: u64) -> Record {
    Record {
        topic: WEATHER_TOPIC,
        key: city.to_owned(),
        fields: format!(
            "\"city\":\"{city}\",\"temperatureC\":{}.5,\"seq\":{n}",
            n % 40
        ),
    }
}

/// Longest a client may take to connect, join and be hydrated.
const HYDRATION_TIMEOUT: Duration = Duration::from_secs(20);

/// Feeds one weather update per city, and gives the server time to cache them before anyone
/// asks.
async fn warm(feed: &Feed, cities: &[String]) {
    for city in cities {
        feed.send(Record {
            topic: WEATHER_TOPIC,
            key: city.clone(),
            fields: format!("\"city\":\"{city}\",\"temperatureC\":21.5"),
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Clients joining in slots spread evenly over a time, each then listening until released.
struct TimedJoins {
    tasks: JoinSet<()>,
    release: watch::Sender<bool>,
    /// From the first slot until the last client was hydrated.
    all_hydrated_ms: f64,
}

impl TimedJoins {
    /// Joins client `i` to city `i % cities.len()` at `i / clients` of `within_ms`; each
    /// must be hydrated, its time from its slot to its hydration recorded in `joins`. Events
    /// after that go to `listening`. Returns once every client was hydrated or failed.
    async fn run(
        dialer: &Arc<Dialer>,
        joins: &Arc<Tally>,
        listening: &Arc<Tally>,
        clients: usize,
        cities: &[String],
        within_ms: u64,
    ) -> Self {
        let (release, released) = watch::channel(false);
        let settled = Arc::new(Semaphore::new(0));
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for index in 0..clients {
            let slot =
                start + Duration::from_micros(within_ms * 1000 * index as u64 / clients as u64);
            let city = cities[index % cities.len()].clone();
            let (dialer, joins, listening, settled, released) = (
                dialer.clone(),
                joins.clone(),
                listening.clone(),
                settled.clone(),
                released.clone(),
            );
            tasks.spawn(async move {
                tokio::time::sleep_until(slot).await;
                let began = Instant::now();
                let joining = async {
                    let (mut client, mut hydrated) = dialer.join(index, &city, &joins).await?;
                    joins.connected.fetch_add(1, Ordering::Relaxed);
                    while !hydrated {
                        client
                            .next_event(&mut |event: Event<'_>| hydrated |= joins.observe(event))
                            .await?;
                    }
                    Ok::<_, ClientError>(client)
                };
                let outcome = tokio::time::timeout(HYDRATION_TIMEOUT, joining).await;
                match outcome {
                    Ok(Ok(client)) => {
                        let hydrated_at = now_micros();
                        joins.latency.record(began.elapsed().as_micros() as u64);
                        joins.last_receipt.fetch_max(hydrated_at, Ordering::Relaxed);
                        joins.hydrated.fetch_add(1, Ordering::Relaxed);
                        settled.add_permits(1);
                        listen(client, true, &listening, released).await;
                    }
                    Ok(Err(error)) => {
                        joins.client_failed(&error);
                        settled.add_permits(1);
                    }
                    Err(_) => {
                        joins.errors.fetch_add(1, Ordering::Relaxed);
                        settled.add_permits(1);
                    }
                }
            });
        }
        let began = now_micros() - start.elapsed().as_micros() as u64;
        let _ = settled.acquire_many(clients as u32).await;
        let all_hydrated_ms = joins
            .last_receipt
            .load(Ordering::Relaxed)
            .saturating_sub(began) as f64
            / 1000.0;
        Self {
            tasks,
            release,
            all_hydrated_ms,
        }
    }

    /// Lets every client go; what they report from now on is not counted.
    async fn release(mut self, listening: &Tally) {
        listening.stopping.store(true, Ordering::Relaxed);
        let _ = self.release.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
