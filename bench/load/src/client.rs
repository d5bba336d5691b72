//! Just enough of a Socket.IO v5 client, over the Engine.IO v4 websocket transport, to do what
//! a Flux browser does: connect to the default namespace, emit with an acknowledgement, answer
//! the server's pings and receive events. Hand-written so that 20,000 of them cost the load
//! generator little: a frame is inspected in place, never parsed into a JSON tree.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("no {0} within {HANDSHAKE_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("unexpected packet during the handshake: {0}")]
    Handshake(String),
}

/// Longest wait for any step of connecting or for an acknowledgement.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// A server-to-client Socket.IO event: its name and the whole text frame it came in.
pub struct Event<'a> {
    pub name: &'a str,
    pub frame: &'a str,
}

pub struct Client {
    ws: WebSocketStream<TcpStream>,
    next_ack: u64,
}

impl Client {
    /// Connects from `source` (spreading clients over loopback addresses keeps 20,000
    /// connections clear of the ephemeral-port range) and joins the default namespace.
    pub async fn connect(server: SocketAddr, source: IpAddr) -> Result<Self, ClientError> {
        let stream = dial(server, source).await?;
        let url = format!("ws://{server}/socket.io/?EIO=4&transport=websocket");
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await?;
        let mut client = Self { ws, next_ack: 0 };
        let open = client.next_text("the Engine.IO open packet").await?;
        if !open.starts_with('0') {
            return Err(ClientError::Handshake(open));
        }
        client.send("40".to_owned()).await?;
        let connected = client.next_text("the namespace CONNECT").await?;
        if !connected.starts_with("40") {
            return Err(ClientError::Handshake(connected));
        }
        Ok(client)
    }

    /// Emits `event` with JSON `args` (the elements of the argument array) and waits for its
    /// acknowledgement, handing every event that arrives meanwhile to `on_event`. Returns the
    /// acknowledgement's arguments as JSON text.
    pub async fn emit_with_ack(
        &mut self,
        event: &str,
        args: &str,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<String, ClientError> {
        let id = self.next_ack;
        self.next_ack += 1;
        let separator = if args.is_empty() { "" } else { "," };
        self.send(format!("42{id}[\"{event}\"{separator}{args}]"))
            .await?;
        let ack_prefix = format!("43{id}");
        let wait = async {
            loop {
                let text = self.next_text("an acknowledgement").await?;
                if let Some(ack) = text.strip_prefix(&ack_prefix) {
                    return Ok(ack.to_owned());
                }
                if let Some(event) = parse_event(&text) {
                    on_event(event);
                }
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, wait)
            .await
            .map_err(|_| ClientError::Timeout("acknowledgement"))?
    }

    /// Waits for the next event from the server; `Err(Closed)` when the server ends the
    /// connection.
    pub async fn next_event(
        &mut self,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ClientError> {
        loop {
            let message = self.ws.next().await.ok_or(ClientError::Closed)??;
            if let Some(event) = self.text_after_pong(&message).await?.and_then(parse_event) {
                on_event(event);
                return Ok(());
            }
        }
    }

    /// Closes the websocket as a browser tab would.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    async fn send(&mut self, text: String) -> Result<(), ClientError> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    async fn next_text(&mut self, waiting_for: &'static str) -> Result<String, ClientError> {
        let receive = async {
            loop {
                let message = self.ws.next().await.ok_or(ClientError::Closed)??;
                if let Some(text) = self.text_after_pong(&message).await? {
                    return Ok(text.to_owned());
                }
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, receive)
            .await
            .map_err(|_| ClientError::Timeout(waiting_for))?
    }

    /// Answers a ping; the text of any other Engine.IO message.
    async fn text_after_pong<'m>(
        &mut self,
        message: &'m Message,
    ) -> Result<Option<&'m str>, ClientError> {
        match message {
            Message::Text(text) if text.as_str() == "2" => {
                self.send("3".to_owned()).await?;
                Ok(None)
            }
            Message::Text(text) => Ok(Some(text.as_str())),
            Message::Close(_) => Err(ClientError::Closed),
            _ => Ok(None),
        }
    }
}

/// A TCP connection to `server` from `source`, without Nagle's delay.
pub(crate) async fn dial(server: SocketAddr, source: IpAddr) -> std::io::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// tungstenite's default read buffer is 128 KiB, zeroed on every read: with 10,000 clients
/// each reading one small frame at a time, that memset alone took a third of this machine's
/// two cores and made every server measured look slower than it is. Frames here are a few
/// hundred bytes; a larger one only takes more reads.
pub(crate) fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096)
}

/// `42["name",...]` → the event; anything else (acks, other packet types) → `None`.
pub(crate) fn parse_event(frame: &str) -> Option<Event<'_>> {
    let rest = frame.strip_prefix("42[\"")?;
    let end = rest.find('"')?;
    Some(Event {
        name: &rest[..end],
        frame,
    })
}

/// The integer value of `"field":` in a frame, without parsing the frame.
pub fn integer_field(frame: &str, field: &str) -> Option<u64> {
    let pattern = format!("\"{field}\":");
    let start = frame.find(&pattern)? + pattern.len();
    let digits = frame[start..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_fields_are_read_in_place() {
        let frame = r#"42["cryptoTickerResponse",{"status":"success","data":{"sentAtUs": 1764000000123456,"price":1}}]"#;
        let event = parse_event(frame).expect("an event");
        assert_eq!(event.name, "cryptoTickerResponse");
        assert_eq!(
            integer_field(event.frame, "sentAtUs"),
            Some(1_764_000_000_123_456)
        );
        assert_eq!(integer_field(event.frame, "missing"), None);
        assert!(parse_event("431[\"x\"]").is_none());
        assert!(parse_event("40{\"sid\":\"a\"}").is_none());
    }
}
