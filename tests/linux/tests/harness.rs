//! The harness itself on one guest: exit status, output, environment, kernel
//! command line (module parameters, host NQN), NIC configuration, QMP,
//! host→guest signals, and the limit on QEMU.
//!
//! Boots TCG guests (~10 s each): ignored by default; run with
//! `cargo test -p tandem-linux-guest -- --ignored`.

use std::time::{Duration, Instant};
use tandem_linux_guest::{Error, GuestConfig, GuestImage, NetBackend, spawn};

#[test]
#[ignore = "boots a TCG guest (~10 s); run with --ignored"]
fn status_output_env_args_nic_qmp_and_signals_reach_the_host() {
    let image = GuestImage::ensure().unwrap_or_else(|e| panic!("{e}"));
    // A point-to-point link to nowhere: only loopback UDP ports.
    let nic = NetBackend::Dgram {
        local: "127.0.0.1:47611".parse().unwrap(),
        remote: "127.0.0.1:47612".parse().unwrap(),
    };
    let script = r#"
. /usr/lib/tg/lib.sh
echo "greeting=$GREETING"
echo "io_timeout=$(cat /sys/module/nvme_core/parameters/io_timeout)"
echo "multipath=$(cat /sys/module/nvme_core/parameters/multipath)"
echo "hostnqn=$(cat /etc/nvme/hostnqn)"
ip -o -4 addr show dev eth0
tg_mark booted
tg_wait_file "$TG_SHARE/go" 60 || tg_fail "no go signal"
echo "got go"
exit 3
"#;
    let config = GuestConfig::new("harness-basics", script)
        .nic(nic, "10.9.0.1/24")
        .env("GREETING", "it's \"quoted\" $HOME")
        .kernel_arg("nvme_core.io_timeout=7")
        .kernel_arg("tg.hostnqn=nqn.2026-11.io.tandem.test:host-a")
        .timeout(Duration::from_secs(120))
        .with_qmp();
    let mut guest = spawn(&image, &config).unwrap_or_else(|e| panic!("{e}"));
    guest
        .wait_for_mark("booted", Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"));
    let status = guest
        .qmp(r#"{"execute":"query-status"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.contains("\"running\""), "{status}");
    guest.signal("go").unwrap();
    let outcome = guest.wait().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.status, Some(3), "{}", outcome.console);
    assert!(!outcome.succeeded());
    assert!(matches!(
        outcome.check(),
        Err(Error::ScriptFailed {
            status: Some(3),
            ..
        })
    ));
    let out = &outcome.output;
    for expected in [
        "greeting=it's \"quoted\" $HOME",
        "io_timeout=7",
        "multipath=Y",
        "hostnqn=nqn.2026-11.io.tandem.test:host-a",
        "inet 10.9.0.1/24",
        "got go",
    ] {
        assert!(out.contains(expected), "output lacks {expected:?}:\n{out}");
    }
    assert!(
        outcome
            .console
            .contains("tg-init: script exited with status 3")
    );
}

#[test]
#[ignore = "boots a TCG guest (~15 s); run with --ignored"]
fn a_guest_past_its_limit_is_killed() {
    let image = GuestImage::ensure().unwrap_or_else(|e| panic!("{e}"));
    let config = GuestConfig::new("harness-limit", "sleep 600").timeout(Duration::from_secs(8));
    let started = Instant::now();
    let result = tandem_linux_guest::run(&image, &config);
    assert!(
        matches!(result, Err(Error::GuestTimedOut { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8 + 5 + 5),
        "{:?}",
        started.elapsed()
    );
}
