//! The gateway in-process: `run()` on port 0 with the domain plugins and the demo services,
//! spoken to over Socket.IO's websocket transport (the engine.io v4 / socket.io v5 framing,
//! written out by hand) and shut down through its `shutdown` future.

use std::time::Duration;

use flux_gateway::config::Config;
use flux_gateway::{Listeners, run};
use flux_tests::wasm_dir;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

/// A plugin directory with the four domain plugins.
fn domain_plugins() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flux-in-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for domain in ["weather", "crypto", "news", "stocks"] {
        let name = format!("flux_{domain}.wasm");
        std::fs::copy(wasm_dir().join(&name), dir.join(&name)).unwrap();
    }
    dir
}

/// The next text frame, skipping engine.io pings (answered) and anything for which `wanted`
/// is false.
async fn next_text(ws: &mut Ws, wanted: impl Fn(&str) -> bool) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let frame = ws.next().await.expect("the connection stays open").unwrap();
            let Message::Text(text) = frame else { continue };
            if text.as_str() == "2" {
                ws.send(Message::text("3")).await.unwrap();
                continue;
            }
            if wanted(text.as_str()) {
                return text.as_str().to_owned();
            }
        }
    })
    .await
    .expect("the frame arrives in time")
}

/// The JSON array of a socket.io packet such as `431[...]` after its type and id prefix.
fn packet_body(packet: &str, prefix: &str) -> Value {
    serde_json::from_str(packet.strip_prefix(prefix).expect("the expected packet")).unwrap()
}

#[tokio::test]
async fn run_serves_socket_io_on_port_0_and_stops_on_shutdown() {
    let mut config = Config {
        plugin_dir: domain_plugins(),
        ..Config::default()
    };
    config.demo.enabled = true;
    config.demo.ticker_every_ms = 50;
    config.reload.watch = false;
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = public.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(run(
        Listeners {
            public,
            admin: None,
        },
        config,
        async {
            let _ = stopped.await;
        },
    ));

    let url = format!("ws://{address}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connects in time")
        .expect("the websocket handshake succeeds");
    let open = next_text(&mut ws, |t| t.starts_with('0')).await;
    assert!(open.contains("\"sid\""), "engine.io open packet: {open}");
    ws.send(Message::text("40")).await.unwrap();
    let connected = next_text(&mut ws, |t| t.starts_with("40")).await;
    assert!(
        connected.contains("\"sid\""),
        "socket.io connect: {connected}"
    );

    // getUserId: the contract's `userUniqueId` event and the acknowledgement carry one id.
    ws.send(Message::text("421[\"getUserId\"]")).await.unwrap();
    let event = next_text(&mut ws, |t| t.starts_with("42[\"userUniqueId\"")).await;
    let id = packet_body(&event, "42")[1].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let ack = next_text(&mut ws, |t| t.starts_with("431")).await;
    assert_eq!(packet_body(&ack, "431")[0], id);

    // A location update: acknowledged, and the crypto ticker flows to the socket's room.
    let mumbai =
        r#"{"city":"Mumbai","region":"Maharashtra","country":"IN","lat":"19.07","lon":"72.87"}"#;
    ws.send(Message::text(format!(
        "422[\"userLocationUpdate\",{mumbai}]"
    )))
    .await
    .unwrap();
    let ack = next_text(&mut ws, |t| t.starts_with("432")).await;
    assert_ne!(packet_body(&ack, "432")[0]["status"], "error", "{ack}");
    let tick = next_text(&mut ws, |t| t.starts_with("42[\"cryptoTickerResponse\"")).await;
    assert_eq!(packet_body(&tick, "42")[1]["status"], "success", "{tick}");

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, gateway)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .expect("run ends cleanly");
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(Ok(frame)) = ws.next().await {
            if matches!(frame, Message::Close(_)) || frame.to_text().is_ok_and(|t| t == "41") {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection is closed at shutdown");
}
