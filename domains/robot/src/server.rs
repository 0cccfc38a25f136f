//! The policy inference node: openpi's websocket protocol on tokio, one model shared by all
//! connections, requests batched when several clients are waiting.
//!
//! - On connect the server sends a metadata frame (msgpack map: action horizon and dimension,
//!   observation width and history, task names, key names, limits).
//! - Each binary frame is an observation ([`crate::wire::decode_observation`]); the reply is a
//!   binary frame `{"actions": f32[H, D], "server_timing": {...}}`.
//! - Anything wrong with a request (garbage bytes, missing keys, wrong shape or dtype, NaN/inf,
//!   unknown task, oversized frame, a full queue, a missed deadline) gets a *text* frame with the
//!   reason — `openpi-client` raises it as an error — and the connection stays open.
//! - `GET /healthz` on the same port answers `200 ok` without upgrading.
//!
//! One model instance is shared by `workers` inference threads (default: one per core);
//! connection tasks hand them jobs through a bounded queue (`try_send`: a full queue is refused
//! at once rather than growing latency without bound). A free thread takes every job already
//! waiting (up to `max_batch`) and decodes them as one batch, so with several clients two
//! batches run at once instead of one large one (on a CPU a call cannot keep every core busy on
//! its own); jobs that waited longer than the deadline are answered with an error instead of
//! being run.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::chunk::ActionChunk;
use crate::error::RobotError;
use crate::policy::{Observation, RobotSettings};
use crate::set::PolicySet;
use crate::wire;

/// Node settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServeConfig {
    /// Most requests one inference thread decodes together.
    pub max_batch: usize,
    /// Inference threads sharing the model, each decoding its own batch.
    #[serde(default = "blockdiff_core::cpu_cores")]
    pub workers: usize,
    /// Requests that may wait for the model; more are refused with "server busy".
    pub queue: usize,
    /// A request still queued after this many milliseconds is answered with an error.
    pub deadline_ms: u64,
    /// Largest observation frame accepted (bytes); larger ones get an error reply. Frames
    /// above 16× this close the connection at the websocket layer (memory protection).
    pub max_frame_bytes: usize,
    /// Serving block size (`None` = the policy's; 1 = autoregressive mode).
    pub block: Option<usize>,
    /// Tokens committed per model call (`None` = the policy's commit rule).
    pub per_step: Option<usize>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            // On a CPU a call's cost grows about linearly with its rows, so large batches buy
            // little throughput and make every request wait for the whole batch: with 8
            // clients on 2 cores, 2 threads × batches of ≤ 2 give p95 7.6–8.1 ms against
            // 14.4 ms for 1 thread × ≤ 8 (README, robot latency).
            max_batch: 2,
            workers: blockdiff_core::cpu_cores(),
            queue: 64,
            deadline_ms: 1000,
            max_frame_bytes: 1 << 20,
            block: None,
            per_step: None,
        }
    }
}

/// Server-side timings of one answer (name, milliseconds or count).
type Timing = Vec<(&'static str, f64)>;

struct Job {
    obs: Observation,
    enqueued: Instant,
    reply: oneshot::Sender<Result<(ActionChunk, Timing), String>>,
}

struct Shared {
    settings: RobotSettings,
    cfg: ServeConfig,
    jobs: mpsc::Sender<Job>,
    metadata: Vec<u8>,
}

/// A running node. Dropping it stops the server.
pub struct ServerHandle {
    /// The bound address (port 0 in the request becomes the real port here).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// Blocks until the server stops (it runs until the process ends or [`Self::stop`]).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops accepting, closes the runtime and waits for it.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// The metadata sent on connect, as JSON.
pub fn metadata(settings: &RobotSettings, cfg: &ServeConfig, block: usize) -> serde_json::Value {
    serde_json::json!({
        "server": "blockdiff-robot",
        "version": env!("CARGO_PKG_VERSION"),
        "action_horizon": settings.config.horizon,
        "action_dim": settings.act_dim,
        "obs_dim": settings.obs_dim,
        "history": settings.config.history,
        "tasks": settings.tasks,
        "state_key": "state",
        "prompt_key": "prompt",
        "tokenizer": match settings.tokenizer { crate::policy::ActionTokenizer::Bins(_) => "bins", crate::policy::ActionTokenizer::Fast(_) => "fast" },
        "block": block,
        "tokens_per_step": cfg.per_step,
        "max_batch": cfg.max_batch,
        "workers": cfg.workers,
        "queue": cfg.queue,
        "deadline_ms": cfg.deadline_ms,
        "max_frame_bytes": cfg.max_frame_bytes,
    })
}

/// Starts the node on `addr` (e.g. `127.0.0.1:8000`, port 0 = any free port) in background
/// threads and returns once it is listening. `policy` is one [`crate::RobotPolicy`] or a
/// task-routed [`PolicySet`].
pub fn spawn(
    policy: impl Into<PolicySet>,
    addr: &str,
    cfg: ServeConfig,
) -> Result<ServerHandle, RobotError> {
    let policy: PolicySet = policy.into();
    if cfg.max_batch == 0 || cfg.workers == 0 || cfg.queue == 0 || cfg.max_frame_bytes == 0 {
        return Err(RobotError::Config(
            "max_batch, workers, queue and max_frame_bytes must be > 0".into(),
        ));
    }
    let std_listener = std::net::TcpListener::bind(addr)
        .map_err(|e| RobotError::Server(format!("cannot listen on {addr}: {e}")))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| RobotError::Server(e.to_string()))?;
    let local = std_listener
        .local_addr()
        .map_err(|e| RobotError::Server(e.to_string()))?;
    let samplers = policy.samplers(cfg.block, cfg.per_step);
    let settings = policy.settings().clone();
    let meta = wire::write_frame(&wire::json_to_value(&metadata(
        &settings,
        &cfg,
        samplers[0].block_size,
    )));
    let (tx, rx) = mpsc::channel::<Job>(cfg.queue);
    let deadline = Duration::from_millis(cfg.deadline_ms);
    let max_batch = cfg.max_batch;
    let policy = Arc::new(policy);
    let rx = Arc::new(Mutex::new(rx));
    for w in 0..cfg.workers {
        let (policy, rx, samplers) = (policy.clone(), rx.clone(), samplers.clone());
        std::thread::Builder::new()
            .name(format!("blockdiff-policy-{w}"))
            .spawn(move || inference_loop(&policy, &rx, &samplers, max_batch, deadline))
            .map_err(|e| RobotError::Server(e.to_string()))?;
    }
    let shared = Arc::new(Shared {
        settings,
        cfg,
        jobs: tx,
        metadata: meta,
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RobotError::Server(e.to_string()))?;
    let thread = std::thread::Builder::new()
        .name("blockdiff-serve".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("listener: {e}");
                        return;
                    }
                };
                accept_loop(listener, shared, stop_rx).await;
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        })
        .map_err(|e| RobotError::Server(e.to_string()))?;
    tracing::info!(%local, "policy node listening");
    Ok(ServerHandle {
        addr: local,
        shutdown: Some(stop_tx),
        thread: Some(thread),
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle_connection(stream, shared).await {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Largest HTTP request head read before the upgrade.
const MAX_HEAD: usize = 16 * 1024;

async fn handle_connection(mut stream: TcpStream, shared: Arc<Shared>) -> Result<(), String> {
    // Read the HTTP head ourselves so `/healthz` can be answered without a websocket upgrade;
    // the bytes read are replayed to the websocket handshake.
    let mut head = Vec::with_capacity(1024);
    let mut tmp = [0u8; 2048];
    let end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut tmp))
            .await
            .map_err(|_| "timed out reading the request".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a request".into());
        }
        head.extend_from_slice(&tmp[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if head.len() > MAX_HEAD {
            let _ = stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            return Err("request head too large".into());
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    let path = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    let upgrade = text
        .lines()
        .any(|l| l.starts_with("upgrade:") && l.contains("websocket"));
    if !upgrade {
        let (status, body) = if path == "/healthz" {
            ("200 OK", "ok\n")
        } else {
            (
                "426 Upgrade Required",
                "websocket endpoint; GET /healthz for health\n",
            )
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
        return Ok(());
    }
    let limit = shared.cfg.max_frame_bytes.saturating_mul(16).max(1 << 20);
    let mut ws_cfg = WebSocketConfig::default();
    ws_cfg.max_message_size = Some(limit);
    ws_cfg.max_frame_size = Some(limit);
    let ws = tokio_tungstenite::accept_async_with_config(
        Rewind {
            prefix: head,
            pos: 0,
            inner: stream,
        },
        Some(ws_cfg),
    )
    .await
    .map_err(|e| format!("handshake: {e}"))?;
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::binary(shared.metadata.clone()))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(msg) = rx.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                // A frame beyond the websocket limit (or a protocol violation) leaves the stream
                // unusable: say why, then close this connection only.
                let _ = tx
                    .send(Message::text(format!("closing the connection: {e}")))
                    .await;
                let _ = tx.close().await;
                return Err(e.to_string());
            }
        };
        let reply = match msg {
            Message::Binary(b) => match infer(&b, &shared).await {
                Ok(frame) => Message::binary(frame),
                Err(e) => Message::text(e),
            },
            Message::Text(_) => Message::text(
                "expected a binary msgpack frame (openpi protocol), got text".to_string(),
            ),
            Message::Close(_) => break,
            _ => continue,
        };
        tx.send(reply).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn infer(frame: &[u8], shared: &Shared) -> Result<Vec<u8>, String> {
    let received = Instant::now();
    if frame.len() > shared.cfg.max_frame_bytes {
        return Err(format!(
            "frame of {} bytes exceeds the limit of {} bytes",
            frame.len(),
            shared.cfg.max_frame_bytes
        ));
    }
    let obs = wire::decode_observation(frame, &shared.settings)?;
    let (tx, rx) = oneshot::channel();
    shared
        .jobs
        .try_send(Job {
            obs,
            enqueued: Instant::now(),
            reply: tx,
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => format!(
                "server busy: {} requests already queued; retry later",
                shared.cfg.queue
            ),
            mpsc::error::TrySendError::Closed(_) => "inference worker stopped".to_string(),
        })?;
    let (chunk, mut timing) = rx
        .await
        .map_err(|_| "inference worker dropped the request".to_string())??;
    timing.push(("total_ms", received.elapsed().as_secs_f64() * 1e3));
    Ok(wire::encode_actions(&chunk, &timing))
}

/// One inference thread: waits its turn at the queue, takes what is waiting, decodes it.
fn inference_loop(
    policy: &PolicySet,
    rx: &Mutex<mpsc::Receiver<Job>>,
    samplers: &[blockdiff_core::sample::SamplerConfig],
    max_batch: usize,
    deadline: Duration,
) {
    loop {
        let jobs = {
            // A poisoned lock only means another worker panicked while holding it; the
            // receiver itself is intact.
            let mut rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            let Some(first) = rx.blocking_recv() else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < max_batch {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            jobs
        };
        let start = Instant::now();
        let (mut live, late): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| start.duration_since(j.enqueued) <= deadline);
        for j in late {
            let waited = start.duration_since(j.enqueued).as_secs_f64() * 1e3;
            let _ = j.reply.send(Err(format!(
                "deadline of {} ms passed after {waited:.1} ms in the queue",
                deadline.as_millis()
            )));
        }
        if live.is_empty() {
            continue;
        }
        // The jobs only need their reply channels from here on: move the observations out.
        let obs: Vec<Observation> = live
            .iter_mut()
            .map(|j| Observation {
                state: std::mem::take(&mut j.obs.state),
                task: j.obs.task,
            })
            .collect();
        // A panic inside the model must cost one batch its answer, not the node its life.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| policy.act(&obs, samplers)));
        let infer_ms = start.elapsed().as_secs_f64() * 1e3;
        let batch = live.len();
        match result {
            Ok(Ok((chunks, stats))) => {
                for (j, c) in live.into_iter().zip(chunks) {
                    let queue_ms = start.duration_since(j.enqueued).as_secs_f64() * 1e3;
                    let _ = j.reply.send(Ok((
                        c,
                        vec![
                            ("infer_ms", infer_ms),
                            ("queue_ms", queue_ms),
                            ("batch", batch as f64),
                            ("nfe", stats.nfe as f64),
                        ],
                    )));
                }
            }
            Ok(Err(e)) => {
                let msg = format!("inference failed: {e}");
                for j in live {
                    let _ = j.reply.send(Err(msg.clone()));
                }
            }
            Err(_) => {
                tracing::error!("inference panicked; batch of {batch} answered with an error");
                for j in live {
                    let _ = j
                        .reply
                        .send(Err("inference failed (internal error)".into()));
                }
            }
        }
    }
}

/// A stream that first replays bytes already read from `inner`.
struct Rewind {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let from = self.pos;
            buf.put_slice(&self.prefix[from..from + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
