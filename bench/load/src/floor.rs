//! The floor of fan-out latency on this machine: the same clients as every other scenario,
//! reading the same websocket frames, from a "server" that does nothing but write them: no
//! broker, no Socket.IO, no tasks to wake, only one blocking `write` per socket per event
//! from a few threads of a process of its own. Whatever latency it shows, the kernel's
//! loopback path and the clients alone cost; no server can deliver an event to these sockets
//! sooner.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::client::{dial, parse_event, ws_config};
use crate::feed::now_micros;
use crate::scenario::{CpuWindow, DRAIN, Measured, Report, Tally, loopback_source};

/// What the floor runs: `clients` sockets written by `writers` threads, `rate` events a
/// second for `seconds`.
#[derive(Args, Clone, Copy)]
pub struct Floor {
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Threads writing, each to its share of the sockets.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    #[arg(long, default_value_t = 3.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

impl Floor {
    fn events(&self) -> u64 {
        (self.rate * self.seconds).round() as u64
    }
}

/// The frame written for event `n`: what the gateway sends for a ticker record (a Socket.IO
/// event in an unmasked websocket text frame), stamped `sent` (µs since the epoch).
fn frame(n: u64, sent: u64) -> Vec<u8> {
    let text = format!(
        "42[\"cryptoTickerResponse\",{{\"status\":\"success\",\"data\":{{\"symbol\":\"BTC-USD\",\"price\":{}.5,\"seq\":{n},\"sentAtUs\":{sent}}}}}]",
        90_000 + n % 1000
    );
    let mut frame = Vec::with_capacity(text.len() + 4);
    frame.push(0x81); // FIN, text
    match u16::try_from(text.len()) {
        Ok(len) if len < 126 => frame.push(len as u8),
        Ok(len) => {
            frame.push(126);
            frame.extend_from_slice(&len.to_be_bytes());
        }
        Err(_) => unreachable!("a ticker frame is a few hundred bytes"),
    }
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// Runs the floor: the writing side in a process of its own (as a server is; each side then
/// has its own file-descriptor limit and its own CPU count), the clients here.
pub async fn run(report: &mut Report, floor: Floor, ramp: usize) -> anyhow::Result<()> {
    report.clients = floor.clients;
    let mut server = Command::new(std::env::current_exe()?)
        .args([
            "floor-server",
            "--clients",
            &floor.clients.to_string(),
            "--writers",
            &floor.writers.to_string(),
            "--rate",
            &floor.rate.to_string(),
            "--seconds",
            &floor.seconds.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut said = BufReader::new(server.stdout.take().expect("piped")).lines();
    let mut next_line = async || -> anyhow::Result<String> {
        said.next_line()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the floor's writer exited"))
    };
    let listening = next_line().await?;
    let address: SocketAddr = listening
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow::anyhow!("unexpected from the floor's writer: {listening}"))?
        .parse()?;

    // Every frame the writer sends is measured: there is no warm-up to leave out.
    let tally = Arc::new(Tally::new(Measured::Ticker));
    tally.window_start.store(0, Ordering::Relaxed);
    let mut readers = JoinSet::new();
    let handshakes = Arc::new(Semaphore::new(ramp));
    let attempted = Arc::new(Semaphore::new(0));
    for index in 0..floor.clients {
        let (tally, handshakes, attempted) = (tally.clone(), handshakes.clone(), attempted.clone());
        readers.spawn(async move {
            let permit = handshakes.acquire_owned().await.expect("never closed");
            let connected = connect(address, index).await;
            drop(permit);
            attempted.add_permits(1);
            match connected {
                Ok(ws) => {
                    tally.connected.fetch_add(1, Ordering::Relaxed);
                    read(ws, &tally).await;
                }
                Err(_) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // A client that could not connect is not waited for.
    let _ = attempted.acquire_many(floor.clients as u32).await;
    let mut tell = server.stdin.take().expect("piped");
    let connected = tally.connected.load(Ordering::Relaxed);
    tell.write_all(format!("{connected}\n").as_bytes()).await?;
    let started = next_line().await?;
    let served: u64 = started
        .strip_prefix("started ")
        .and_then(|count| count.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the floor's writer did not start: {started}"))?;
    let cpu = CpuWindow::start(server.id());
    let writing_from = now_micros();
    anyhow::ensure!(
        next_line().await? == "written",
        "the floor's writer did not finish"
    );

    let events = floor.events();
    let expected = events * served;
    let deadline = tokio::time::Instant::now() + DRAIN;
    while tally.delivered.load(Ordering::Relaxed) < expected
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cpu.finish(report);
    drop(tell);
    server.wait().await?;
    tally.stopping.store(true, Ordering::Relaxed);
    readers.abort_all();
    report.records = events;
    report.expected = expected;
    tally.report(report, Some(writing_from));
    Ok(())
}

/// The writing side, in the process `run` starts: says where it listens, accepts the
/// clients (as many as its first line of input says connected), says `started`, writes every
/// event, says `written`, and exits once its input ends.
pub fn serve(floor: Floor) -> anyhow::Result<()> {
    // A deep backlog: clients connect 200 at a time, faster than one thread accepts them.
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let listener = socket.listen(4096)?.into_std()?;
    listener.set_nonblocking(false)?;
    let mut say = std::io::stdout();
    writeln!(say, "listening {}", listener.local_addr()?)?;
    // Accepts as many clients as the first line of input says connected.
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let accepting = accepted.clone();
    std::thread::spawn(move || -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            accepting.lock().expect("never poisoned").push(stream);
        }
    });
    let mut connected = String::new();
    std::io::stdin().read_line(&mut connected)?;
    let connected: usize = connected.trim().parse()?;
    // A connection the client saw open may still be on its way through the backlog.
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.lock().expect("never poisoned").len() < connected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let streams = std::mem::take(&mut *accepted.lock().expect("never poisoned"));
    writeln!(say, "started {}", streams.len())?;
    let (events, interval) = (floor.events(), Duration::from_secs_f64(1.0 / floor.rate));
    let begin = Instant::now() + Duration::from_millis(100);
    let per_writer = floor.clients.div_ceil(floor.writers.max(1)).max(1);
    let mut streams = streams.into_iter();
    let mut writers = Vec::new();
    loop {
        let share: Vec<TcpStream> = streams.by_ref().take(per_writer).collect();
        if share.is_empty() {
            break;
        }
        writers.push(std::thread::spawn(move || {
            write(share, begin, interval, events)
        }));
    }
    let mut open = Vec::new();
    for writer in writers {
        open.extend(
            writer
                .join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))?,
        );
    }
    writeln!(say, "written")?;
    // Keep the sockets open until the clients have read everything.
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    drop(open);
    Ok(())
}

async fn connect(
    server: SocketAddr,
    index: usize,
) -> std::io::Result<WebSocketStream<tokio::net::TcpStream>> {
    let stream = dial(server, loopback_source(server, index)).await?;
    Ok(WebSocketStream::from_raw_socket(stream, Role::Client, Some(ws_config())).await)
}

/// Reads frames as the Socket.IO clients do, counting each event into `tally`.
async fn read(mut ws: WebSocketStream<tokio::net::TcpStream>, tally: &Tally) {
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Text(text) = message
            && let Some(event) = parse_event(&text)
        {
            tally.observe(event);
        }
    }
}

/// One writer thread: at each event's time, one frame stamped with that time written to
/// every socket of its share in turn. Returns the sockets still open.
fn write(
    mut share: Vec<TcpStream>,
    begin: Instant,
    interval: Duration,
    events: u64,
) -> Vec<TcpStream> {
    for n in 0..events {
        let due = begin + interval.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let frame = frame(n, now_micros());
        share.retain_mut(|stream| stream.write_all(&frame).is_ok());
    }
    share
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::integer_field;

    #[test]
    fn frames_are_websocket_text_frames_of_a_ticker_event() {
        let short = frame(7, 1_764_000_000_123_456);
        assert_eq!(short[0], 0x81);
        let (len, text) = match short[1] {
            126 => (
                u16::from_be_bytes([short[2], short[3]]) as usize,
                &short[4..],
            ),
            len => (len as usize, &short[2..]),
        };
        assert_eq!(len, text.len());
        let text = std::str::from_utf8(text).expect("utf-8");
        let event = parse_event(text).expect("a Socket.IO event");
        assert_eq!(event.name, "cryptoTickerResponse");
        assert_eq!(
            integer_field(event.frame, "sentAtUs"),
            Some(1_764_000_000_123_456)
        );
    }
}
