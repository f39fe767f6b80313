//! A webhook receiver on loopback: it records every request it is sent, and can be
//! down (a 503, then a connection cut before any answer) for the first attempts.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request the receiver took (answered 200).
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Seen {
    taken: Vec<Received>,
    refused: usize,
}

#[derive(Debug)]
pub struct Receiver {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Refuses the first `down_for` requests: the odd ones with a 503, the even ones
    /// by closing the connection unanswered.
    pub async fn start(down_for: usize) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, seen, down_for).await;
                });
            }
        });
        Ok(Self { url, seen, task })
    }

    /// The requests answered 200, in the order they came.
    pub fn taken(&self) -> Vec<Received> {
        self.seen.lock().map(|s| s.taken.clone()).unwrap_or_default()
    }

    /// How many requests were refused.
    pub fn refused(&self) -> usize {
        self.seen.lock().map(|s| s.refused).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Seen>>, down_for: usize) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before the head ended");
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before the body ended");
        body.extend_from_slice(&chunk[..n]);
    }
    let refusal = {
        let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if seen.refused < down_for {
            seen.refused += 1;
            Some(seen.refused)
        } else {
            seen.taken.push(Received { path, headers, body });
            None
        }
    };
    match refusal {
        // Cut: no answer at all.
        Some(n) if n % 2 == 0 => Ok(()),
        Some(_) => {
            let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            Ok(stream.write_all(answer.as_bytes()).await?)
        }
        None => Ok(stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await?),
    }
}
