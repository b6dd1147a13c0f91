//! File operations of the agent. All blocking I/O runs on tokio's blocking
//! pool; data moves in bounded chunks in both directions, so a 1 GiB file
//! never sits in memory.

use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::Status;
use warren_proto::{CHUNK_BYTES, paths, pb};

use crate::errors::FileError;
use crate::users::UserDb;

/// Most entries per ListDir message.
pub const LIST_BATCH: usize = 1000;
/// Chunks queued between a blocking reader/writer and the stream.
pub const QUEUE: usize = 4;

/// Validates and normalises a caller's path.
pub fn normalize(path: &str) -> Result<String, FileError> {
    Ok(paths::normalize(path)?)
}

/// Maps a file's metadata to the protocol's stat, naming owner and group.
pub fn file_stat(path: &str, meta: &Metadata, users: &UserDb) -> pb::FileStat {
    let file_type = meta.file_type();
    let (kind, target) = if file_type.is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        (pb::FileType::Symlink, target)
    } else if file_type.is_dir() {
        (pb::FileType::Dir, String::new())
    } else if file_type.is_file() {
        (pb::FileType::File, String::new())
    } else {
        (pb::FileType::Other, String::new())
    };
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".to_string());
    pb::FileStat {
        path: path.to_string(),
        name,
        file_type: kind as i32,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_unix_ms: meta
            .mtime()
            .saturating_mul(1000)
            .saturating_add(meta.mtime_nsec() / 1_000_000),
        symlink_target: target,
        owner: users.user_name(meta.uid()).unwrap_or_default().to_string(),
        group: users.group_name(meta.gid()).unwrap_or_default().to_string(),
    }
}

/// Runs blocking work on the blocking pool; a panic there becomes an
/// Internal status instead of taking the agent down.
pub async fn blocking<T, F>(work: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, Status> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("file operation failed unexpectedly: {e}")))?
}

/// `lstat` of a path.
pub fn stat(path: &str, users: &UserDb) -> Result<pb::FileStat, FileError> {
    let path = normalize(path)?;
    let meta = std::fs::symlink_metadata(&path).map_err(|e| FileError::io("reading", &path, e))?;
    Ok(file_stat(&path, &meta, users))
}

/// Starts streaming a file: opens it (errors are returned before any
/// chunk), then a blocking task sends chunks until `length` or EOF.
pub fn read_file(
    request: pb::ReadFileRequest,
    users: Arc<UserDb>,
    tx: mpsc::Sender<Result<pb::ReadFileChunk, Status>>,
) -> Result<(), FileError> {
    let path = normalize(&request.path)?;
    let mut file = File::open(&path).map_err(|e| FileError::io("reading", &path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::io("reading", &path, e))?;
    if meta.is_dir() {
        return Err(FileError::IsDirectory(path));
    }
    if request.offset > 0 {
        file.seek(SeekFrom::Start(request.offset))
            .map_err(|e| FileError::io("reading", &path, e))?;
    }
    let stat = file_stat(&path, &meta, &users);
    tokio::task::spawn_blocking(move || {
        let mut left = if request.length == 0 {
            u64::MAX
        } else {
            request.length
        };
        let mut first = Some(stat);
        loop {
            let want = (CHUNK_BYTES as u64).min(left) as usize;
            // Read straight into the chunk's own buffer (no zeroing, no
            // second copy): guest CPU is what limits transfers.
            let mut buf = Vec::with_capacity(want);
            let n = if want == 0 {
                0
            } else {
                match read_full(&mut file, &mut buf, want) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(FileError::io("reading", &path, e).into()));
                        return;
                    }
                }
            };
            if n == 0 && first.is_none() {
                return;
            }
            left -= n as u64;
            let chunk = pb::ReadFileChunk {
                stat: first.take(),
                data: Bytes::from(buf),
            };
            if tx.blocking_send(Ok(chunk)).is_err() || n == 0 {
                // Caller gone, or the empty first chunk of an empty file.
                return;
            }
        }
    });
    Ok(())
}

/// Reads until `buf` is full or EOF (short reads from pipes or special
/// files otherwise make many tiny chunks).
/// Appends up to `want` bytes from `file` to `buf`, retrying short reads;
/// returns how many were read (0 at end of file).
fn read_full(file: &mut File, buf: &mut Vec<u8>, want: usize) -> std::io::Result<usize> {
    let start = buf.len();
    loop {
        let got = buf.len() - start;
        if got >= want {
            return Ok(got);
        }
        match (&mut *file).take((want - got) as u64).read_to_end(buf) {
            Ok(0) => return Ok(buf.len() - start),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Report what we have; the error repeats on the next call.
            Err(_) if buf.len() > start => return Ok(buf.len() - start),
            Err(e) => return Err(e),
        }
    }
}

/// What the async side of WriteFile tells the blocking writer.
pub enum WriteMsg {
    /// Bytes to append.
    Data(Bytes),
    /// The stream ended normally: commit.
    Finish,
}

/// The prepared target of a WriteFile.
struct WriteTarget {
    path: String,
    parent: String,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    append: bool,
    /// The size announced by the sender (0: unknown).
    size_hint: u64,
}

/// Removes the temp file unless it was renamed into place.
struct TempGuard {
    path: Option<String>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn parent_of(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => path[..i].to_string(),
    }
}

/// `mkdir -p` of `path` with `mode` for created directories, chowning
/// created ones to `owner`.
fn make_dirs(path: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<(), FileError> {
    let mut current = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        current.push('/');
        current.push_str(part);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => continue,
            // A symlink to a directory is fine to go through.
            Ok(meta) if meta.file_type().is_symlink() && Path::new(&current).is_dir() => continue,
            Ok(_) => return Err(FileError::ExistsNotDirectory(current)),
            Err(_) => {}
        }
        match std::fs::DirBuilder::new().mode(mode).create(&current) {
            Ok(()) => {
                set_mode_owner(&current, mode, owner)?;
            }
            // Raced with another creator: fine if it is a directory.
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    && Path::new(&current).is_dir() => {}
            Err(e) => return Err(FileError::io("creating", &current, e)),
        }
    }
    Ok(())
}

/// Sets exact permission bits (umask-free) and, if given, the owner.
fn set_mode_owner(path: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<(), FileError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| FileError::io("setting the mode of", path, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| FileError::io("setting the owner of", path, e))?;
    }
    Ok(())
}

/// Resolves an owner name to (uid, primary gid); empty means "leave as
/// is" (root, since the agent runs as root).
fn resolve_owner(user: &str, users: &UserDb) -> Result<Option<(u32, u32)>, FileError> {
    if user.is_empty() {
        return Ok(None);
    }
    users
        .resolve(user)
        .map(|u| Some((u.uid, u.gid)))
        .ok_or_else(|| FileError::UnknownUser(user.to_string()))
}

/// Checks the header and prepares the target directory. Runs before any
/// data is accepted so that errors come back before the upload.
fn prepare_write(header: &pb::WriteFileHeader, users: &UserDb) -> Result<WriteTarget, FileError> {
    let path = normalize(&header.path)?;
    if path == "/" {
        return Err(FileError::IsDirectory(path));
    }
    let owner = resolve_owner(&header.user, users)?;
    let parent = parent_of(&path);
    if header.create_parents {
        make_dirs(&parent, 0o755, owner)?;
    }
    match std::fs::metadata(&parent) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(FileError::NotDirectory(parent)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileError::MissingParent(parent));
        }
        Err(e) => return Err(FileError::io("writing", &path, e)),
    }
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.is_dir()
    {
        return Err(FileError::IsDirectory(path));
    }
    if header.size_hint > 0
        && let Ok(vfs) = nix::sys::statvfs::statvfs(parent.as_str())
    {
        let available = vfs.blocks_available() * vfs.fragment_size();
        if available < header.size_hint {
            return Err(FileError::NoSpace {
                path,
                needed: header.size_hint,
                available,
            });
        }
    }
    Ok(WriteTarget {
        path,
        parent,
        owner,
        mode: (header.mode != 0).then_some(header.mode & 0o7777),
        append: header.append,
        size_hint: header.size_hint,
    })
}

/// Writes one file: validates the header, then consumes `rx` on a blocking
/// thread. The file appears atomically (temp + rename) unless appending;
/// if the stream ends without `Finish` the temp file is removed and the
/// target is untouched.
pub async fn write_file(
    header: pb::WriteFileHeader,
    users: Arc<UserDb>,
    rx: mpsc::Receiver<WriteMsg>,
) -> Result<pb::WriteFileResponse, Status> {
    let target = {
        let users = users.clone();
        blocking(move || prepare_write(&header, &users).map_err(Status::from)).await?
    };
    blocking(move || write_blocking(target, rx, &users).map_err(Status::from)).await
}

/// A target opened for writing: the file (the temp file unless appending)
/// and what the commit needs.
pub struct OpenWrite {
    target: WriteTarget,
    file: Arc<File>,
    guard: TempGuard,
    created: bool,
    existing: Option<std::fs::Metadata>,
}

impl OpenWrite {
    /// The file the bytes go to (shared with a bulk sink).
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// The target path, for messages.
    pub fn path(&self) -> &str {
        &self.target.path
    }
}

/// Opens the target: the file itself when appending, else a temp file
/// beside it that only [`commit_write`] renames into place.
fn open_write(target: WriteTarget) -> Result<OpenWrite, FileError> {
    let path = target.path.as_str();
    let io = |e| FileError::io("writing", path, e);
    let existing = std::fs::metadata(path).ok();
    let (file, guard, created) = if target.append {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(target.mode.unwrap_or(0o644))
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io)?;
        (file, TempGuard { path: None }, existing.is_none())
    } else {
        let name = Path::new(path)
            .file_name()
            .map(OsStr::as_bytes)
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned();
        let temp = format!(
            "{}/.{name}.warren-tmp-{:016x}",
            target.parent.trim_end_matches('/'),
            rand::random::<u64>()
        );
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .map_err(io)?;
        // The announced size up front: on tmpfs mounted huge=within_size
        // the writes then get 2 MiB pages. Trimmed at commit if the
        // sender sent less; harmless elsewhere (a sparse length).
        if target.size_hint > 0 && file.metadata().is_ok_and(|m| m.file_type().is_file()) {
            file.set_len(target.size_hint).map_err(io)?;
        }
        (file, TempGuard { path: Some(temp) }, true)
    };
    Ok(OpenWrite {
        target,
        file: Arc::new(file),
        guard,
        created,
        existing,
    })
}

/// Validates the header and opens the target, on a blocking thread.
pub async fn begin_write(
    header: pb::WriteFileHeader,
    users: Arc<UserDb>,
) -> Result<OpenWrite, Status> {
    blocking(move || {
        prepare_write(&header, &users)
            .and_then(open_write)
            .map_err(Status::from)
    })
    .await
}

/// Makes a completely written file durable and visible: sync, mode and
/// owner, then the rename over the target (unless appending).
pub fn commit_write(
    open: OpenWrite,
    written: u64,
    users: &UserDb,
) -> Result<pb::WriteFileResponse, FileError> {
    let OpenWrite {
        target,
        file,
        mut guard,
        created,
        existing,
    } = open;
    let path = target.path.as_str();
    let io = |e| FileError::io("writing", path, e);
    if !target.append && target.size_hint > 0 && target.size_hint != written {
        file.set_len(written).map_err(io)?;
    }
    match file.sync_all() {
        // Devices and pipes cannot be synced (EINVAL); nothing to flush.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        other => other.map_err(io)?,
    }
    if created {
        // Existing files keep their mode and owner unless asked otherwise.
        let mode = target
            .mode
            .or_else(|| existing.as_ref().map(|m| m.mode() & 0o7777))
            .unwrap_or(0o644);
        let owner = target
            .owner
            .or_else(|| existing.as_ref().map(|m| (m.uid(), m.gid())));
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&*file, Some(uid), Some(gid))
                .map_err(|e| FileError::io("setting the owner of", path, e))?;
        }
    }
    // The written file's own metadata (fstat), not the path's: a process
    // in the guest may move or remove the path the moment it appears.
    let meta = file.metadata().map_err(io)?;
    drop(file);
    if let Some(temp) = guard.path.take() {
        if let Err(e) = std::fs::rename(&temp, path) {
            guard.path = Some(temp);
            return Err(io(e));
        }
        if let Ok(dir) = File::open(&target.parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(pb::WriteFileResponse {
        bytes_written: written,
        stat: Some(file_stat(path, &meta, users)),
    })
}

/// The blocking half of WriteFile: writes chunks as they arrive and
/// commits only on `Finish`.
fn write_blocking(
    target: WriteTarget,
    mut rx: mpsc::Receiver<WriteMsg>,
    users: &UserDb,
) -> Result<pb::WriteFileResponse, FileError> {
    let open = open_write(target)?;
    let io = |e| FileError::io("writing", open.path(), e);
    let mut written = 0u64;
    let mut finished = false;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            WriteMsg::Data(data) => {
                (&*open.file).write_all(&data).map_err(io)?;
                written += data.len() as u64;
            }
            WriteMsg::Finish => {
                finished = true;
                break;
            }
        }
    }
    if !finished {
        // Cancelled: the guard removes the temp file.
        return Err(FileError::Protocol(format!(
            "the upload of {} was cancelled before it finished; the file was not changed",
            open.path()
        )));
    }
    commit_write(open, written, users)
}

/// Streams a directory listing in batches of at most [`LIST_BATCH`],
/// reading directories lazily; `depth` levels of subdirectories are
/// descended (symlinks are never followed below the top).
pub fn list_dir(
    request: pb::ListDirRequest,
    users: Arc<UserDb>,
    tx: mpsc::Sender<Result<pb::ListDirChunk, Status>>,
) -> Result<(), FileError> {
    let path = normalize(&request.path)?;
    let meta = std::fs::metadata(&path).map_err(|e| FileError::io("listing", &path, e))?;
    if !meta.is_dir() {
        return Err(FileError::NotDirectory(path));
    }
    let top = std::fs::read_dir(&path).map_err(|e| FileError::io("listing", &path, e))?;
    tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(LIST_BATCH.min(64));
        // Directories still to list, with the levels left below them.
        let mut pending: Vec<(String, u32)> = Vec::new();
        let mut current = Some((path, top, request.depth));
        while let Some((dir, entries, depth)) = current.take() {
            for entry in entries {
                let Ok(entry) = entry else { continue };
                let name = entry.file_name();
                let full = if dir == "/" {
                    format!("/{}", name.to_string_lossy())
                } else {
                    format!("{dir}/{}", name.to_string_lossy())
                };
                // The entry may vanish between readdir and lstat: skip it.
                let Ok(meta) = std::fs::symlink_metadata(&full) else {
                    continue;
                };
                if depth > 0 && meta.is_dir() {
                    pending.push((full.clone(), depth - 1));
                }
                batch.push(file_stat(&full, &meta, &users));
                if batch.len() >= LIST_BATCH {
                    let entries = std::mem::take(&mut batch);
                    if tx.blocking_send(Ok(pb::ListDirChunk { entries })).is_err() {
                        return;
                    }
                }
            }
            while let Some((next, depth)) = pending.pop() {
                match std::fs::read_dir(&next) {
                    Ok(entries) => {
                        current = Some((next, entries, depth));
                        break;
                    }
                    // Unreadable subdirectory: listed, not descended.
                    Err(error) => tracing::debug!(%error, dir = %next, "not descending"),
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Ok(pb::ListDirChunk { entries: batch }));
        }
    });
    Ok(())
}

/// Creates a directory (`mkdir -p` with `parents`).
pub fn make_dir(request: &pb::MakeDirRequest, users: &UserDb) -> Result<pb::FileStat, FileError> {
    let path = normalize(&request.path)?;
    let mode = if request.mode == 0 {
        0o755
    } else {
        request.mode & 0o7777
    };
    let owner = resolve_owner(&request.user, users)?;
    if request.parents {
        let parent = parent_of(&path);
        make_dirs(&parent, 0o755, owner)?;
        match std::fs::DirBuilder::new().mode(mode).create(&path) {
            Ok(()) => set_mode_owner(&path, mode, owner)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !Path::new(&path).is_dir() {
                    return Err(FileError::ExistsNotDirectory(path));
                }
            }
            Err(e) => return Err(FileError::io("creating", &path, e)),
        }
    } else {
        match std::fs::DirBuilder::new().mode(mode).create(&path) {
            Ok(()) => set_mode_owner(&path, mode, owner)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FileError::MissingParent(parent_of(&path)));
            }
            Err(e) => return Err(FileError::io("creating", &path, e)),
        }
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|e| FileError::io("creating", &path, e))?;
    Ok(file_stat(&path, &meta, users))
}

/// Removes a file, symlink or empty directory; with `recursive`, a whole
/// tree (symlinks inside are removed, never followed).
pub fn remove(request: &pb::RemoveRequest) -> Result<(), FileError> {
    let path = normalize(&request.path)?;
    if path == "/" {
        return Err(FileError::Root("remove"));
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|e| FileError::io("removing", &path, e))?;
    let result = if meta.is_dir() {
        if request.recursive {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_dir(&path)
        }
    } else {
        std::fs::remove_file(&path)
    };
    result.map_err(|e| FileError::io("removing", &path, e))
}

/// Renames `from` to `to`; without `overwrite` an existing destination is
/// an error (checked atomically with RENAME_NOREPLACE).
pub fn rename(request: &pb::RenameRequest) -> Result<(), FileError> {
    let from = normalize(&request.from)?;
    let to = normalize(&request.to)?;
    if from == "/" || to == "/" {
        return Err(FileError::Root("rename"));
    }
    std::fs::symlink_metadata(&from).map_err(|e| FileError::io("renaming", &from, e))?;
    let describe = format!("{from} to {to}");
    let io = |e| FileError::io("renaming", &describe, e);
    let cross_device = |e: &std::io::Error| e.raw_os_error() == Some(libc::EXDEV);
    if request.overwrite {
        return match std::fs::rename(&from, &to) {
            // Different file systems (e.g. /tmp is tmpfs): move like `mv`.
            Err(e) if cross_device(&e) => move_across(Path::new(&from), Path::new(&to)).map_err(io),
            other => other.map_err(io),
        };
    }
    let cwd = nix::fcntl::AT_FDCWD;
    match nix::fcntl::renameat2(
        cwd,
        from.as_str(),
        cwd,
        to.as_str(),
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => Err(FileError::DestinationExists(to)),
        Err(nix::errno::Errno::EXDEV) => {
            if Path::new(&to).symlink_metadata().is_ok() {
                return Err(FileError::DestinationExists(to));
            }
            move_across(Path::new(&from), Path::new(&to)).map_err(io)
        }
        // File systems without RENAME_NOREPLACE: check, then rename.
        Err(nix::errno::Errno::EINVAL) if Path::new(&to).symlink_metadata().is_err() => {
            std::fs::rename(&from, &to).map_err(|e| FileError::io("renaming", &describe, e))
        }
        Err(nix::errno::Errno::EINVAL) => Err(FileError::DestinationExists(to)),
        Err(errno) => Err(FileError::io(
            "renaming",
            &describe,
            std::io::Error::from(errno),
        )),
    }
}

/// Moves a file, symlink or directory tree to another file system, the way
/// `mv` does: copy (keeping mode, owner and times), then remove the source.
/// A regular file appears at the target atomically.
fn move_across(from: &Path, to: &Path) -> std::io::Result<()> {
    copy_tree(from, to)?;
    let meta = from.symlink_metadata()?;
    if meta.is_dir() {
        std::fs::remove_dir_all(from)
    } else {
        std::fs::remove_file(from)
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = from.symlink_metadata()?;
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        let target = std::fs::read_link(from)?;
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(target, to)?;
        let _ = std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()));
        return Ok(());
    }
    if file_type.is_dir() {
        match std::fs::create_dir(to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && to.is_dir() => {}
            Err(e) => return Err(e),
        }
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        let parent = to.parent().unwrap_or(Path::new("/"));
        let temp = parent.join(format!(
            ".{}.warren-tmp-{:016x}",
            to.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            rand::random::<u64>()
        ));
        let result = (|| {
            std::fs::copy(from, &temp)?;
            File::open(&temp)?.sync_all()?;
            std::fs::rename(&temp, to)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
            return result;
        }
    }
    let _ = std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()));
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let times = [
        nix::sys::time::TimeSpec::new(meta.atime(), meta.atime_nsec()),
        nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
    ];
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        to,
        &times[0],
        &times[1],
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_trees_across_directories_like_mv() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/file.txt"), "content").unwrap();
        std::os::unix::fs::symlink("sub/file.txt", src.join("link")).unwrap();
        let dst = dir.path().join("dst");
        move_across(&src, &dst).unwrap();
        assert!(!src.exists());
        assert_eq!(
            std::fs::read_to_string(dst.join("sub/file.txt")).unwrap(),
            "content"
        );
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("sub/file.txt")
        );
    }

    #[test]
    fn parents() {
        assert_eq!(parent_of("/a"), "/");
        assert_eq!(parent_of("/a/b/c"), "/a/b");
    }

    #[test]
    fn stat_names_and_types() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("f", &link).unwrap();
        let db = UserDb::load(Path::new("/"));
        let s = stat(file.to_str().unwrap(), &db).unwrap();
        assert_eq!(
            (s.file_type, s.size, s.name.as_str()),
            (pb::FileType::File as i32, 3, "f")
        );
        let s = stat(link.to_str().unwrap(), &db).unwrap();
        assert_eq!(s.file_type, pb::FileType::Symlink as i32);
        assert_eq!(s.symlink_target, "f");
        let s = stat("/", &db).unwrap();
        assert_eq!(
            (s.name.as_str(), s.file_type),
            ("/", pb::FileType::Dir as i32)
        );
        assert!(matches!(stat("relative", &db), Err(FileError::Path(_))));
    }

    #[test]
    fn mkdir_remove_rename() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap().to_string();
        let db = UserDb::default();
        let deep = format!("{base}/a/b/c");
        let req = |path: &str, parents| pb::MakeDirRequest {
            path: path.into(),
            parents,
            mode: 0o700,
            user: String::new(),
        };
        assert!(matches!(
            make_dir(&req(&deep, false), &db),
            Err(FileError::MissingParent(_))
        ));
        let s = make_dir(&req(&deep, true), &db).unwrap();
        assert_eq!(s.mode, 0o700);
        make_dir(&req(&deep, true), &db).unwrap();
        assert!(matches!(
            make_dir(&req(&deep, false), &db),
            Err(FileError::Io { .. })
        ));
        let not_empty = remove(&pb::RemoveRequest {
            path: format!("{base}/a"),
            recursive: false,
        });
        assert_eq!(
            Status::from(not_empty.unwrap_err()).code(),
            tonic::Code::FailedPrecondition
        );
        std::fs::write(format!("{base}/x"), b"x").unwrap();
        std::fs::write(format!("{base}/y"), b"y").unwrap();
        let err = rename(&pb::RenameRequest {
            from: format!("{base}/x"),
            to: format!("{base}/y"),
            overwrite: false,
        })
        .unwrap_err();
        assert!(matches!(err, FileError::DestinationExists(_)));
        rename(&pb::RenameRequest {
            from: format!("{base}/x"),
            to: format!("{base}/y"),
            overwrite: true,
        })
        .unwrap();
        assert_eq!(std::fs::read(format!("{base}/y")).unwrap(), b"x");
        remove(&pb::RemoveRequest {
            path: format!("{base}/a"),
            recursive: true,
        })
        .unwrap();
        assert!(!Path::new(&format!("{base}/a")).exists());
        assert!(matches!(
            remove(&pb::RemoveRequest {
                path: "/".into(),
                recursive: true
            }),
            Err(FileError::Root(_))
        ));
    }
}
