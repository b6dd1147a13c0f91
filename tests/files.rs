//! File operations against a real guest filesystem.

use warren_sandbox::{Command, FileError, FileType, GuestErrorKind, WriteOptions};
use warren_testkit::pattern;
use warren_tests::{TestEnv, sha256_hex, within};

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mib_file_round_trips_with_the_same_sha256() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    let data = pattern(100 * 1024 * 1024, 7);
    let expected = sha256_hex(&data);

    let host_dir = tempfile::tempdir().unwrap();
    let upload = host_dir.path().join("up.bin");
    std::fs::write(&upload, &data).unwrap();
    let info = within(
        600,
        "upload",
        sandbox.upload(&upload, "/home/user/big.bin", WriteOptions::default(), &()),
    )
    .await
    .unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.file_type, FileType::File);

    // The guest sees the same bytes.
    let output = sandbox
        .run(Command::new("sha256sum").arg("/home/user/big.bin"))
        .await
        .unwrap();
    assert_eq!(
        output.stdout_text(),
        format!("{expected}  /home/user/big.bin\n")
    );

    let download = host_dir.path().join("down.bin");
    let bytes = within(
        600,
        "download",
        sandbox.download("/home/user/big.bin", &download, &()),
    )
    .await
    .unwrap();
    assert_eq!(bytes, data.len() as u64);
    let downloaded = std::fs::read(&download).unwrap();
    assert_eq!(sha256_hex(&downloaded), expected);
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn large_directories_list_completely() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    let output = sandbox
        .run(Command::shell("mkdir -p /tmp/many && cd /tmp/many && seq -f 'file-%05g' 1 20000 | xargs touch && mkdir sub && echo x > sub/inner"))
        .await
        .unwrap();
    assert!(output.status.success(), "{}", output.stderr_text());
    let entries = within(300, "list", sandbox.list_dir("/tmp/many", 0))
        .await
        .unwrap();
    assert_eq!(entries.len(), 20001);
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    assert_eq!(names[0], "file-00001");
    assert_eq!(names[19999], "file-20000");
    assert!(
        entries
            .iter()
            .any(|e| e.name == "sub" && e.file_type == FileType::Dir)
    );
    // Depth 1 includes the subdirectory's entries, with full paths.
    let deep = sandbox.list_dir("/tmp/many", 1).await.unwrap();
    assert_eq!(deep.len(), 20002);
    assert!(
        deep.iter()
            .any(|e| e.path == "/tmp/many/sub/inner" && e.size == 2)
    );
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_stat_rename_and_remove_behave_like_a_filesystem() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    let dir = sandbox.make_dir("/srv/a/b/c", true).await.unwrap();
    assert_eq!(dir.file_type, FileType::Dir);
    // mkdir -p of an existing directory succeeds.
    sandbox.make_dir("/srv/a/b/c", true).await.unwrap();

    sandbox
        .write_file("/srv/a/b/c/note.txt", "hello\n")
        .await
        .unwrap();
    let info = sandbox.stat("/srv/a/b/c/note.txt").await.unwrap();
    assert_eq!(info.size, 6);
    assert_eq!(info.mode, 0o644);
    assert_eq!(info.owner, "root");

    // Owned by a user when asked.
    let options = WriteOptions {
        user: Some("user".into()),
        mode: Some(0o600),
        create_parents: true,
        ..WriteOptions::default()
    };
    let mut data: &[u8] = b"secret";
    let info = sandbox
        .write_file_from("/home/user/new/dir/secret.txt", &mut data, options, &())
        .await
        .unwrap();
    assert_eq!((info.owner.as_str(), info.mode), ("user", 0o600));
    let output = sandbox
        .run(
            Command::new("cat")
                .arg("/home/user/new/dir/secret.txt")
                .user("user"),
        )
        .await
        .unwrap();
    assert_eq!(output.stdout_text(), "secret");

    // Rename refuses to clobber unless told to.
    sandbox.write_file("/srv/other.txt", "other").await.unwrap();
    let err = sandbox
        .rename("/srv/other.txt", "/srv/a/b/c/note.txt", false)
        .await
        .unwrap_err();
    assert_eq!(
        err.guest_kind(),
        Some(GuestErrorKind::AlreadyExists),
        "{err}"
    );
    sandbox
        .rename("/srv/other.txt", "/srv/a/b/c/note.txt", true)
        .await
        .unwrap();
    assert_eq!(
        sandbox.read_file("/srv/a/b/c/note.txt").await.unwrap(),
        b"other"
    );
    assert!(!sandbox.exists("/srv/other.txt").await.unwrap());

    // Removing a non-empty directory needs `recursive`.
    let err = sandbox.remove("/srv/a", false).await.unwrap_err();
    assert_eq!(
        err.guest_kind(),
        Some(GuestErrorKind::FailedPrecondition),
        "{err}"
    );
    sandbox.remove("/srv/a", true).await.unwrap();
    assert!(!sandbox.exists("/srv/a").await.unwrap());

    // Missing files are NotFound and say which path.
    let err = sandbox.read_file("/srv/missing.txt").await.unwrap_err();
    assert_eq!(err.guest_kind(), Some(GuestErrorKind::NotFound));
    assert!(err.to_string().contains("/srv/missing.txt"), "{err}");
    let err = sandbox
        .write_file("/no/such/parent/file", "x")
        .await
        .unwrap_err();
    assert_eq!(err.guest_kind(), Some(GuestErrorKind::NotFound), "{err}");
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_outside_the_sandbox_root_are_refused() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    for path in ["/../etc/passwd", "/tmp/../../etc/shadow", "etc/passwd", ""] {
        match sandbox.read_file(path).await {
            Err(FileError::Path(error)) => {
                let message = error.to_string();
                assert!(
                    message.contains("escapes")
                        || message.contains("relative")
                        || message.contains("empty"),
                    "{path:?}: {message}"
                );
            }
            other => panic!("{path:?}: expected a path error, got {other:?}"),
        }
    }
    // The sandbox is still fine afterwards.
    assert!(sandbox.exists("/etc/passwd").await.unwrap());
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_upload_leaves_the_previous_file_untouched() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    sandbox
        .write_file("/tmp/keep.txt", "original")
        .await
        .unwrap();

    /// A reader that fails after some bytes, like a host disk error.
    struct Failing(usize);
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("host disk failed")));
            }
            let n = self.0.min(buf.remaining()).min(64 * 1024);
            buf.put_slice(&vec![b'z'; n]);
            self.0 -= n;
            std::task::Poll::Ready(Ok(()))
        }
    }
    let err = sandbox
        .write_file_from(
            "/tmp/keep.txt",
            &mut Failing(3 << 20),
            WriteOptions::default(),
            &(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, FileError::Local { .. }), "{err}");
    assert_eq!(
        sandbox.read_file("/tmp/keep.txt").await.unwrap(),
        b"original"
    );
    // No temp file is left next to it.
    let listing = sandbox.list_dir("/tmp", 0).await.unwrap();
    let names: Vec<&str> = listing.iter().map(|e| e.name.as_str()).collect();
    assert!(
        within(30, "temp cleanup", async {
            loop {
                let listing = sandbox.list_dir("/tmp", 0).await.unwrap();
                if listing.iter().all(|e| !e.name.contains("warren-tmp")) {
                    break true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await,
        "temp files left: {names:?}"
    );
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}
