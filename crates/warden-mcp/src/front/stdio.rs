//! The stdio front end: newline-delimited JSON-RPC on a reader/writer pair (the
//! process's stdin/stdout for `warden mcp`).

use serde_json::Value;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::jsonrpc;
use crate::session::Gateway;
use crate::upstream::MAX_MESSAGE;

/// Serve one client until its input ends; then stop the upstreams.
pub async fn serve<R, W>(gw: Arc<Gateway>, input: R, mut output: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let session = gw.session(tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let mut line = msg.to_string().into_bytes();
            line.push(b'\n');
            output.write_all(&line).await?;
            output.flush().await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if line.len() > MAX_MESSAGE {
            let _ = tx.send(jsonrpc::error(
                Value::Null,
                jsonrpc::INVALID_REQUEST,
                "message too large",
            ));
            continue;
        }
        let msg = match serde_json::from_slice::<Value>(text) {
            Ok(v) => v,
            Err(_) => {
                let _ = tx.send(jsonrpc::error(
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    "parse error: not JSON",
                ));
                continue;
            }
        };
        // Requests run concurrently (a slow tool must not block the session);
        // notifications and responses are cheap and keep their order.
        let is_request = msg.get("method").is_some() && msg.get("id").is_some() || msg.is_array();
        let s = session.clone();
        let tx2 = tx.clone();
        if is_request {
            tokio::spawn(async move {
                if let Some(r) = s.handle(msg).await {
                    let _ = tx2.send(r);
                }
            });
        } else if let Some(r) = s.handle(msg).await {
            let _ = tx2.send(r);
        }
    }
    session.shutdown();
    drop(session);
    drop(tx);
    // Let queued responses out, but do not wait for upstreams that never answer.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    Ok(())
}
