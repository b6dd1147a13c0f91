//! Things going wrong: bad requests, VMs killed from outside.

use std::sync::Arc;
use warren_api::message::one_line;

use warren_sandbox::{Command, CreateError, ExecError, NoProgress, SandboxSpec, Unavailable};
use warren_tests::{TestEnv, within};

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_fail_clearly_and_leave_nothing_behind() {
    let env = TestEnv::new();
    let create = |spec: SandboxSpec| env.manager.create(spec, Arc::new(NoProgress));

    let err = create(SandboxSpec {
        image: "no-such-image".into(),
        ..SandboxSpec::default()
    })
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("no-such-image") && message.contains("debian"),
        "{message}"
    );

    let err = create(SandboxSpec {
        memory_mib: 0,
        ..SandboxSpec::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, CreateError::InvalidSpec(_)), "{err}");
    assert!(one_line(&err).contains("at least"), "{err}");

    let too_much = (env.manager.host().memory_total_mib + 1024) as u32;
    let err = create(SandboxSpec {
        memory_mib: too_much,
        ..SandboxSpec::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, CreateError::InvalidSpec(_)), "{err}");
    assert!(one_line(&err).contains("more than this host has"), "{err}");

    let err = create(SandboxSpec {
        vcpus: 0,
        ..SandboxSpec::default()
    })
    .await
    .unwrap_err();
    assert!(one_line(&err).contains("vCPU"), "{err}");

    let err = create(SandboxSpec {
        env: [("BAD=NAME".to_string(), "x".to_string())].into(),
        ..SandboxSpec::default()
    })
    .await
    .unwrap_err();
    assert!(one_line(&err).contains("BAD=NAME"), "{err}");
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_killed_from_outside_is_reported_as_such() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    let pid = sandbox.vm_pid();
    // Someone else kills QEMU.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let err = within(60, "exec on a dead VM", sandbox.run(Command::new("true")))
        .await
        .unwrap_err();
    match &err {
        ExecError::Unavailable(Unavailable::VmExited { exit, .. }) => {
            assert_eq!(exit.signal, Some(9));
            assert!(!exit.requested);
        }
        other => panic!("expected VmExited, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("killed by signal 9") && message.contains("not requested"),
        "{message}"
    );
    // Files report it the same way.
    let err = sandbox.read_file("/etc/hostname").await.unwrap_err();
    assert!(err.to_string().contains("killed by signal 9"), "{err}");
    assert!(sandbox.vm_exit().is_some());

    // Destroying it still cleans up.
    sandbox.destroy().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_sandbox_without_destroy_leaves_nothing_behind() {
    let env = TestEnv::new();
    let sandbox = within(300, "create", env.sandbox()).await;
    let pid = sandbox.vm_pid();
    drop(sandbox);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_abandoned_midway_leaves_nothing_behind() {
    let env = TestEnv::new();
    within(
        900,
        "image",
        env.manager.prepare_image("debian", Arc::new(NoProgress)),
    )
    .await
    .unwrap();
    // Give up on the create while the guest is still booting.
    let create = env
        .manager
        .create(SandboxSpec::default(), Arc::new(NoProgress));
    let abandoned = tokio::time::timeout(std::time::Duration::from_millis(1500), create).await;
    if let Ok(result) = abandoned {
        // A very fast host booted it anyway: clean up normally.
        result.unwrap().destroy().await.unwrap();
    }
    env.assert_clean();
}
