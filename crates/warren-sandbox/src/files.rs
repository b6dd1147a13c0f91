//! File operations on a sandbox's filesystem.
//!
//! Transfers stream in chunks in both directions, so a file of any size
//! moves with bounded memory on both sides.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use warren_proto::{paths, pb};

use crate::agent::Classified;
use crate::error::FileError;
use crate::sandbox::Sandbox;

/// Kind of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (not followed).
    Symlink,
    /// Device, socket, fifo, ...
    Other,
}

/// Metadata of a file in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileInfo {
    /// Absolute path.
    pub path: String,
    /// Last path component.
    pub name: String,
    /// Kind.
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Group gid.
    pub gid: u32,
    /// Owner name, when known.
    pub owner: String,
    /// Group name, when known.
    pub group: String,
    /// Modification time.
    #[serde(with = "unix_ms")]
    pub modified: SystemTime,
    /// Target of a symlink.
    pub symlink_target: Option<String>,
}

mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as i64;
        s.serialize_i64(ms)
    }
}

impl FileInfo {
    fn from_pb(stat: pb::FileStat) -> Self {
        let file_type = match pb::FileType::try_from(stat.file_type) {
            Ok(pb::FileType::File) => FileType::File,
            Ok(pb::FileType::Dir) => FileType::Dir,
            Ok(pb::FileType::Symlink) => FileType::Symlink,
            _ => FileType::Other,
        };
        let modified = if stat.mtime_unix_ms >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_millis(stat.mtime_unix_ms as u64)
        } else {
            SystemTime::UNIX_EPOCH
        };
        Self {
            path: stat.path,
            name: stat.name,
            file_type,
            size: stat.size,
            mode: stat.mode & 0o7777,
            uid: stat.uid,
            gid: stat.gid,
            owner: stat.owner,
            group: stat.group,
            modified,
            symlink_target: (!stat.symlink_target.is_empty()).then_some(stat.symlink_target),
        }
    }
}

/// Options for writing a file.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Permission bits of a new file (default 0644).
    pub mode: Option<u32>,
    /// Owner of the new file (default root).
    pub user: Option<String>,
    /// Create missing parent directories.
    pub create_parents: bool,
    /// Append instead of replacing.
    pub append: bool,
    /// Expected size, so a full disk is reported before any byte moves.
    pub size_hint: Option<u64>,
}

/// Reports bytes moved by a transfer (for progress bars).
pub trait TransferProgress: Send + Sync {
    /// Called with the running total.
    fn transferred(&self, bytes: u64);
}

impl TransferProgress for () {
    fn transferred(&self, _bytes: u64) {}
}

/// How long the guest may take to accept a bulk upload it was told about.
const BULK_START_TIMEOUT: Duration = Duration::from_secs(30);

impl Sandbox {
    async fn file_error(&self, status: tonic::Status) -> FileError {
        match self.shared().classify(status).await {
            Classified::Guest(error) => FileError::Guest(error),
            Classified::Unavailable(unavailable) => FileError::Unavailable(unavailable),
        }
    }

    fn check_usable_for_files(&self) -> Result<(), FileError> {
        match self.shared().unavailable() {
            Some(unavailable) => Err(FileError::Unavailable(unavailable)),
            None => Ok(()),
        }
    }

    /// Metadata of a path (symlinks are not followed).
    pub async fn stat(&self, path: &str) -> Result<FileInfo, FileError> {
        let path = paths::normalize(path)?;
        self.check_usable_for_files()?;
        let response = self.client().stat(pb::StatRequest { path }).await;
        match response {
            Ok(response) => response
                .into_inner()
                .stat
                .map(FileInfo::from_pb)
                .ok_or_else(|| FileError::Protocol("stat reply without metadata".into())),
            Err(status) => Err(self.file_error(status).await),
        }
    }

    /// Whether a path exists.
    pub async fn exists(&self, path: &str) -> Result<bool, FileError> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(FileError::Guest(error))
                if error.kind == crate::error::GuestErrorKind::NotFound =>
            {
                Ok(false)
            }
            Err(other) => Err(other),
        }
    }

    /// Lists a directory; `depth` > 0 descends that many levels.
    pub async fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<FileInfo>, FileError> {
        let path = paths::normalize(path)?;
        self.check_usable_for_files()?;
        let mut stream = match self
            .client()
            .list_dir(pb::ListDirRequest { path, depth })
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.file_error(status).await),
        };
        let mut entries = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => entries.extend(chunk.entries.into_iter().map(FileInfo::from_pb)),
                Ok(None) => return Ok(entries),
                Err(status) => return Err(self.file_error(status).await),
            }
        }
    }

    /// Creates a directory (`parents`: like `mkdir -p`).
    pub async fn make_dir(&self, path: &str, parents: bool) -> Result<FileInfo, FileError> {
        let path = paths::normalize(path)?;
        self.check_usable_for_files()?;
        let request = pb::MakeDirRequest {
            path,
            parents,
            mode: 0,
            user: String::new(),
        };
        match self.client().make_dir(request).await {
            Ok(response) => response
                .into_inner()
                .stat
                .map(FileInfo::from_pb)
                .ok_or_else(|| FileError::Protocol("mkdir reply without metadata".into())),
            Err(status) => Err(self.file_error(status).await),
        }
    }

    /// Removes a file, symlink or empty directory (`recursive`: trees).
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), FileError> {
        let path = paths::normalize(path)?;
        self.check_usable_for_files()?;
        match self
            .client()
            .remove(pb::RemoveRequest { path, recursive })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) => Err(self.file_error(status).await),
        }
    }

    /// Renames a path; without `overwrite`, an existing target is an error.
    pub async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<(), FileError> {
        let from = paths::normalize(from)?;
        let to = paths::normalize(to)?;
        self.check_usable_for_files()?;
        match self
            .client()
            .rename(pb::RenameRequest {
                from,
                to,
                overwrite,
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) => Err(self.file_error(status).await),
        }
    }

    /// Streams a file out of the sandbox into `sink`. Returns the bytes
    /// written and the file's metadata.
    pub async fn read_file_to<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        sink: &mut W,
        progress: &dyn TransferProgress,
    ) -> Result<(u64, FileInfo), FileError> {
        let path = paths::normalize(path)?;
        self.check_usable_for_files()?;
        let request = pb::ReadFileRequest {
            path: path.clone(),
            offset: 0,
            length: 0,
        };
        let mut stream = match self.client().read_file(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.file_error(status).await),
        };
        let mut total = 0u64;
        let mut info = None;
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    if let Some(stat) = chunk.stat {
                        info = Some(FileInfo::from_pb(stat));
                    }
                    if !chunk.data.is_empty() {
                        sink.write_all(&chunk.data).await.map_err(sink_error)?;
                        total += chunk.data.len() as u64;
                        progress.transferred(total);
                    }
                }
                Ok(None) => break,
                Err(status) => return Err(self.file_error(status).await),
            }
        }
        sink.flush().await.map_err(sink_error)?;
        let info = info
            .ok_or_else(|| FileError::Protocol(format!("read of {path} returned no metadata")))?;
        Ok((total, info))
    }

    /// Streams `length` bytes from `offset` of a sandbox file into `sink`
    /// (length 0: to the end). Works on devices such as /dev/zero too.
    pub async fn read_file_range_to<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        offset: u64,
        length: u64,
        sink: &mut W,
    ) -> Result<u64, FileError> {
        let path = paths::normalize(path)?;
        self.check_usable_for_files()?;
        let request = pb::ReadFileRequest {
            path,
            offset,
            length,
        };
        let mut stream = match self.client().read_file(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.file_error(status).await),
        };
        let mut total = 0u64;
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    // A guest that sends more than was asked for gets cut
                    // off at the length (its bytes are untrusted).
                    let room = if length == 0 {
                        u64::MAX
                    } else {
                        length - total
                    };
                    let take = chunk
                        .data
                        .len()
                        .min(usize::try_from(room).unwrap_or(usize::MAX));
                    sink.write_all(&chunk.data[..take])
                        .await
                        .map_err(sink_error)?;
                    total += take as u64;
                    if length != 0 && total >= length {
                        return Ok(total);
                    }
                }
                Ok(None) => return Ok(total),
                Err(status) => return Err(self.file_error(status).await),
            }
        }
    }

    /// The TCP ports something in the sandbox listens on (its kernel's
    /// socket tables, read through the agent, at most 1 MiB of each), so
    /// a client can offer links to them.
    pub async fn listening_ports(&self) -> Result<Vec<warren_net::ListeningPort>, FileError> {
        const TABLE_LIMIT: u64 = 1 << 20;
        let mut tables = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let mut text = Vec::new();
            match self
                .read_file_range_to(table, 0, TABLE_LIMIT, &mut text)
                .await
            {
                Ok(_) => tables.push(text),
                // A guest kernel without IPv6 has no tcp6 table.
                Err(error)
                    if table.ends_with('6')
                        && error.guest_kind() == Some(crate::error::GuestErrorKind::NotFound) => {}
                Err(error) => return Err(error),
            }
        }
        let tables: Vec<&[u8]> = tables.iter().map(Vec::as_slice).collect();
        Ok(warren_net::listening_ports(&tables))
    }

    /// Reads a whole (small) file into memory.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, FileError> {
        let mut out = Vec::new();
        self.read_file_to(path, &mut out, &()).await?;
        Ok(out)
    }

    /// Downloads a sandbox file to a host path (written to a temp file and
    /// renamed, so the host path never holds a partial download).
    pub async fn download(
        &self,
        path: &str,
        local: &Path,
        progress: &dyn TransferProgress,
    ) -> Result<u64, FileError> {
        let dir = local
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.warren-download-{}",
            local.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id()
        ));
        let local_err = |source| FileError::Local {
            path: local.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(&tmp).await.map_err(local_err)?;
        let result = async {
            let (bytes, _) = self.read_file_to(path, &mut file, progress).await?;
            file.sync_all().await.map_err(local_err)?;
            tokio::fs::rename(&tmp, local).await.map_err(local_err)?;
            Ok(bytes)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Streams `source` into a sandbox file. Unless appending, the file
    /// appears atomically when complete; a failed transfer leaves the old
    /// file untouched.
    pub async fn write_file_from<R: AsyncRead + Unpin + Send>(
        &self,
        path: &str,
        source: &mut R,
        options: WriteOptions,
        progress: &dyn TransferProgress,
    ) -> Result<FileInfo, FileError> {
        let path = paths::normalize(path)?;
        self.check_usable_for_files()?;
        // File bodies go beside HTTP/2 when the guest takes it (about twice
        // the guest-side speed under emulation; see warren_proto::bulk).
        let mut bulk = self.open_bulk();
        let (tx, rx) = mpsc::channel::<pb::WriteFileChunk>(8);
        let header = pb::WriteFileHeader {
            path: path.clone(),
            mode: options.mode.unwrap_or(0),
            user: options.user.unwrap_or_default(),
            create_parents: options.create_parents,
            append: options.append,
            size_hint: options.size_hint.unwrap_or(0),
            bulk_transfer: bulk.as_ref().map_or(0, |b| b.id()),
        };
        tx.send(pb::WriteFileChunk {
            chunk: Some(pb::write_file_chunk::Chunk::Header(header)),
        })
        .await
        .expect("receiver alive");
        let mut client = self.client();
        let call = tokio::spawn(async move { client.write_file(ReceiverStream::new(rx)).await });

        // Pump the source into the stream (or the bulk transfer) while the
        // call runs. `tx.closed()` means the call already ended: the guest
        // refused, and its status says why.
        let pump = async {
            if let Some(sender) = bulk.as_mut() {
                tokio::select! {
                    ready = tokio::time::timeout(BULK_START_TIMEOUT, sender.ready()) => {
                        if !matches!(ready, Ok(Ok(()))) {
                            return Err(FileError::Protocol(format!(
                                "the guest agent did not start the upload of {path} within \
                                 {BULK_START_TIMEOUT:?} (its connection may have been \
                                 replaced); retry"
                            )));
                        }
                    }
                    _ = tx.closed() => return Ok(0),
                }
            }
            let mut total = 0u64;
            loop {
                let mut buf = vec![0u8; warren_proto::CHUNK_BYTES];
                let mut filled = 0;
                // Fill whole chunks: fewer, larger messages move faster.
                while filled < buf.len() {
                    let n = source
                        .read(&mut buf[filled..])
                        .await
                        .map_err(source_error)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok::<u64, FileError>(total);
                }
                buf.truncate(filled);
                total += filled as u64;
                match bulk.as_mut() {
                    Some(sender) => {
                        tokio::select! {
                            sent = sender.send(&buf) => if let Err(error) = sent {
                                return Err(FileError::Protocol(format!(
                                    "uploading {path}: {error}"
                                )));
                            },
                            _ = tx.closed() => return Ok(total),
                        }
                    }
                    None => {
                        let chunk = pb::WriteFileChunk {
                            chunk: Some(pb::write_file_chunk::Chunk::Data(Bytes::from(buf))),
                        };
                        if tx.send(chunk).await.is_err() {
                            return Ok(total);
                        }
                    }
                }
                progress.transferred(total);
                if filled < warren_proto::CHUNK_BYTES {
                    return Ok(total);
                }
            }
        };
        let pumped = pump.await;
        match pumped {
            Ok(total) => {
                // Only an explicit end commits the upload (see the proto).
                let _ = tx
                    .send(pb::WriteFileChunk {
                        chunk: Some(pb::write_file_chunk::Chunk::End(pb::WriteFileEnd {
                            total_bytes: total,
                        })),
                    })
                    .await;
            }
            Err(error) => {
                // The host source failed midway. The stream ends without its
                // end marker, so the agent discards its temp file and the
                // sandbox file stays as it was; cancelling the call as well
                // frees the channel sooner.
                drop(tx);
                call.abort();
                return Err(error);
            }
        }
        drop(tx);
        let response = call
            .await
            .map_err(|e| FileError::Protocol(format!("write task failed: {e}")))?;
        match response {
            Ok(response) => {
                let response = response.into_inner();
                response
                    .stat
                    .map(FileInfo::from_pb)
                    .ok_or_else(|| FileError::Protocol("write reply without metadata".into()))
            }
            Err(status) => Err(self.file_error(status).await),
        }
    }

    /// Writes bytes to a sandbox file (atomically replacing it).
    pub async fn write_file(
        &self,
        path: &str,
        data: impl AsRef<[u8]>,
    ) -> Result<FileInfo, FileError> {
        let data = data.as_ref();
        let options = WriteOptions {
            size_hint: Some(data.len() as u64),
            ..WriteOptions::default()
        };
        let mut reader = data;
        self.write_file_from(path, &mut reader, options, &()).await
    }

    /// Uploads a host file into the sandbox.
    pub async fn upload(
        &self,
        local: &Path,
        path: &str,
        options: WriteOptions,
        progress: &dyn TransferProgress,
    ) -> Result<FileInfo, FileError> {
        let local_err = |source| FileError::Local {
            path: local.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(local_err)?;
        let size = file.metadata().await.map_err(local_err)?.len();
        let options = WriteOptions {
            size_hint: Some(options.size_hint.unwrap_or(size)),
            ..options
        };
        self.write_file_from(path, &mut file, options, progress)
            .await
    }
}

/// A local write of a download failed: the caller's sink, not a path.
fn sink_error(source: std::io::Error) -> FileError {
    FileError::Local {
        path: "<sink>".into(),
        source,
    }
}

/// A local read of an upload failed: the caller's source, not a path.
fn source_error(source: std::io::Error) -> FileError {
    FileError::Local {
        path: "<source>".into(),
        source,
    }
}
