//! A Rust client of the policy node (openpi protocol) and the request→chunk latency benchmark.
//! The Python evaluation uses the real `openpi-client`; this client exists for benchmarks and
//! tests that must control concurrency and send malformed frames.

use std::net::SocketAddr;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::RobotError;
use crate::wire;

/// What the node answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A binary (msgpack) frame.
    Frame(Vec<u8>),
    /// A text frame: the node's error message.
    Error(String),
}

/// One websocket connection to the node.
pub struct PolicyClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The metadata frame received on connect.
    pub metadata: rmpv::Value,
}

fn server_err(e: impl std::fmt::Display) -> RobotError {
    RobotError::Server(e.to_string())
}

impl PolicyClient {
    /// Connects and reads the metadata frame.
    pub async fn connect(addr: SocketAddr) -> Result<Self, RobotError> {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
            .await
            .map_err(server_err)?;
        let metadata = match ws.next().await {
            Some(Ok(Message::Binary(b))) => wire::read_frame(&b).map_err(RobotError::Server)?,
            other => {
                return Err(server_err(format!(
                    "expected a metadata frame, got {other:?}"
                )))
            }
        };
        Ok(Self { ws, metadata })
    }

    /// Sends any message and waits for the reply.
    pub async fn send(&mut self, msg: Message) -> Result<Reply, RobotError> {
        self.ws.send(msg).await.map_err(server_err)?;
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => return Ok(Reply::Frame(b.to_vec())),
                Some(Ok(Message::Text(t))) => return Ok(Reply::Error(t.to_string())),
                Some(Ok(Message::Close(_))) | None => {
                    return Err(server_err("connection closed by the node"))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(server_err(e)),
            }
        }
    }

    /// Sends an observation and returns the reply.
    pub async fn infer(&mut self, state: &[f32], prompt: &str) -> Result<Reply, RobotError> {
        self.send(Message::binary(wire::encode_observation(state, prompt)))
            .await
    }
}

/// Request→chunk latency percentiles over concurrent clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Requests answered with actions.
    pub requests: usize,
    /// Requests answered with an error.
    pub errors: usize,
    /// Median round trip (ms).
    pub p50_ms: f64,
    /// 95th percentile (ms).
    pub p95_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Mean (ms).
    pub mean_ms: f64,
    /// Answered requests per second over the whole run.
    pub throughput_rps: f64,
}

pub use blockdiff_core::bench::percentile;

/// Runs `clients` connections, each sending `requests` observations back to back (cycling
/// through `observations`), after `warmup` unmeasured requests per client.
pub fn latency_bench(
    addr: SocketAddr,
    observations: &[(Vec<f32>, String)],
    clients: usize,
    requests: usize,
    warmup: usize,
) -> Result<LatencyReport, RobotError> {
    if observations.is_empty() || clients == 0 {
        return Err(RobotError::Config(
            "latency bench needs observations and clients".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(server_err)?;
    rt.block_on(async {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let obs = observations.to_vec();
            tasks.push(tokio::spawn(async move {
                let mut client = PolicyClient::connect(addr).await?;
                let mut lat = Vec::with_capacity(requests);
                let mut errors = 0;
                for i in 0..warmup + requests {
                    let (s, p) = &obs[(c * 7919 + i) % obs.len()];
                    let t = Instant::now();
                    let r = client.infer(s, p).await?;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    if i >= warmup {
                        match r {
                            Reply::Frame(_) => lat.push(ms),
                            Reply::Error(_) => errors += 1,
                        }
                    }
                }
                Ok::<_, RobotError>((lat, errors))
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.map_err(server_err)??;
            all.extend(l);
            errors += e;
        }
        let wall = started.elapsed().as_secs_f64();
        all.sort_by(f64::total_cmp);
        Ok(LatencyReport {
            clients,
            requests: all.len(),
            errors,
            p50_ms: percentile(&all, 50.0),
            p95_ms: percentile(&all, 95.0),
            p99_ms: percentile(&all, 99.0),
            mean_ms: all.iter().sum::<f64>() / all.len().max(1) as f64,
            throughput_rps: all.len() as f64 / wall.max(1e-9),
        })
    })
}
