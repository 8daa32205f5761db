//! HTTP/JSON and WebSocket on the service's own port.

use super::Shared;
use bytes::Bytes;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Serves one HTTP/1 connection whose first bytes (`prefix`) were already read.
pub(crate) async fn serve(_shared: Arc<Shared>, mut stream: TcpStream, _prefix: Bytes) {
    let _ = stream
        .write_all(
            b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
}
