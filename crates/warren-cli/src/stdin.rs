//! Local stdin into a process in a sandbox, for both ways `warren` reaches
//! one (the embedded `warren run` and the remote `warren exec`), piped or
//! under a terminal.

use std::future::Future;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

/// Copies local stdin to a process with `write` (which says whether the
/// process still takes input) in reads of up to `chunk` bytes, and runs
/// `at_end` once stdin ends. The task stops when either side does; abort
/// it when the process exits.
pub fn pump<W, WF, E, EF>(chunk: usize, mut write: W, at_end: E) -> JoinHandle<()>
where
    W: FnMut(Bytes) -> WF + Send + 'static,
    WF: Future<Output = bool> + Send,
    E: FnOnce() -> EF + Send + 'static,
    EF: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; chunk];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return at_end().await,
                Ok(n) => {
                    if !write(Bytes::copy_from_slice(&buf[..n])).await {
                        return;
                    }
                }
            }
        }
    })
}
