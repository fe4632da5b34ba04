//! A keep-alive HTTP/1.1 load generator for `flagstore bench serve`: each connection sends one
//! request, reads the whole response, sends the next. Written for this one job (POST a small
//! JSON body, read a Content-Length response) so that the client costs as little as possible
//! beside the server on the same two cores.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a load run measured. Latencies are kept only as percentiles, so that a million
/// requests do not add tens of megabytes to the process whose memory the bench reports.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub requests: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// Responses whose status was not 200.
    pub failures: u64,
}

impl LoadReport {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// The `p`th percentile (0-100) of sorted microsecond latencies.
fn percentile(sorted_micros: &[u32], p: usize) -> Duration {
    let index = (sorted_micros.len() * p / 100).min(sorted_micros.len().saturating_sub(1));
    Duration::from_micros(sorted_micros.get(index).copied().unwrap_or_default().into())
}

/// Sends `requests` requests over `connections` keep-alive connections to `address`: request
/// `i` is `POST path` with the body `body(i)`.
pub fn run(
    address: SocketAddr,
    connections: usize,
    requests: u64,
    path: &str,
    body: impl Fn(u64) -> String + Send + Sync + 'static,
) -> std::io::Result<LoadReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path = path.to_string();
    runtime.block_on(async move {
        let body = std::sync::Arc::new(body);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(connections);
        for connection in 0..connections as u64 {
            let (body, path) = (std::sync::Arc::clone(&body), path.clone());
            tasks.push(tokio::spawn(async move {
                let mut stream = TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                let mut latencies = Vec::new();
                let mut failures = 0;
                let mut buffer = Vec::with_capacity(4096);
                let mut i = connection;
                while i < requests {
                    let payload = body(i);
                    let request = format!(
                        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\n\r\n{payload}",
                        payload.len()
                    );
                    let sent = Instant::now();
                    stream.write_all(request.as_bytes()).await?;
                    if read_response(&mut stream, &mut buffer).await? != 200 {
                        failures += 1;
                    }
                    latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                    i += connections as u64;
                }
                Ok::<_, std::io::Error>((latencies, failures))
            }));
        }
        let mut report = LoadReport::default();
        let mut all: Vec<u32> = Vec::with_capacity(requests as usize);
        for task in tasks {
            let (latencies, failures) = task.await.map_err(std::io::Error::other)??;
            all.extend(latencies);
            report.failures += failures;
        }
        report.elapsed = started.elapsed();
        report.requests = all.len() as u64;
        all.sort_unstable();
        report.p50 = percentile(&all, 50);
        report.p99 = percentile(&all, 99);
        Ok(report)
    })
}

/// Reads one response (headers and a Content-Length body) and returns its status.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<u16> {
    buffer.clear();
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Ok(status)
}
