//! NVMe in-band authentication through both nodes of a pair: both take the
//! same `dhchap=` keys; the Linux 6.12 host (Debian 13 guest) connects to
//! both portals with `--dhchap-secret` and `--dhchap-ctrl-secret`
//! (bidirectional), runs fio and the acknowledged-write checker, and keeps
//! running across a planned switchover and a kill of the primary; the
//! killed node, restarted, authenticates the host again when it reconnects;
//! both nodes authenticated it (admin and I/O queues), neither refused it,
//! and no secret is on a console. This is also the Linux 6.12 host's
//! failover test in CI (the other HA tests run the default 6.1 host; all of
//! them pass with 6.12 too, docs/linux-guest.md). Needs root; ~5 min under
//! TCG.

use std::time::Duration;
use tandem_linux_guest::Release;

use tandem_linux_guest::cluster::{
    Cluster, ClusterOptions, HOST_NQN, Name, ROLE_TIMEOUT, epoch_ms, lock,
};
use tandem_linux_guest::scenario::dhchap_secret;

#[test]
fn dhchap_through_both_nodes_and_across_a_switchover() {
    let Some(_guard) = lock() else { return };
    let host_key: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(13).wrapping_add(5))
        .collect();
    let ctrl_key: Vec<u8> = (0u8..48)
        .map(|i| i.wrapping_mul(29).wrapping_add(3))
        .collect();
    let host_secret = dhchap_secret(1, &host_key);
    let ctrl_secret = dhchap_secret(0, &ctrl_key);
    let options = ClusterOptions {
        extra: format!("dhchap={HOST_NQN},{host_secret},{ctrl_secret}"),
        host_release: Some(Release::Debian13),
        host_connect_opts: format!(
            "--dhchap-secret {host_secret} --dhchap-ctrl-secret {ctrl_secret}"
        ),
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start_with("dhchap", options);
    c.start_io();
    c.hold();
    c.switchover(Name::A, false);
    c.hold();
    // An unplanned failover with the 6.12 host: b killed, a takes over;
    // b restarted resyncs, and the host authenticates to it again.
    let since_a = c.role_count(Name::A);
    c.event("kill -9 b (primary)");
    let at = epoch_ms();
    c.kill(Name::B);
    let line = c.wait_role(Name::A, "primary", since_a, ROLE_TIMEOUT);
    assert_eq!(line.reason, "failover", "a took over: {line:?}");
    c.wait_io_flows(at, Duration::from_secs(90));
    c.hold();
    c.event("restart b");
    c.restart(Name::B);
    c.wait_role(Name::B, "secondary", 0, ROLE_TIMEOUT);
    c.wait_in_sync(Name::A, Duration::from_secs(120));
    // The host's reconnection to the restarted b authenticates (b's log
    // is the new boot's).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !c
        .member(Name::B)
        .log()
        .contains("authenticated on queue 1 ")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    c.hold();
    for name in [Name::A, Name::B] {
        let log = c.member(name).log();
        let authenticated: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("authenticated on queue") && l.contains("bidirectional"))
            .collect();
        assert!(
            authenticated.iter().any(|l| l.contains("queue 0 "))
                && authenticated.iter().any(|l| l.contains("queue 1 ")),
            "{} authenticated the host's admin and I/O queues:\n{}",
            name.as_str(),
            c.member(name).tail(80)
        );
        assert!(
            !log.contains("failed authentication"),
            "{} refused the host:\n{}",
            name.as_str(),
            c.member(name).tail(80)
        );
        for secret in [&host_secret, &ctrl_secret] {
            let body = &secret["DHHC-1:00:".len()..secret.len() - 1];
            assert!(
                !log.contains(body),
                "a secret on {}'s console",
                name.as_str()
            );
        }
    }
    c.finish(Some("switchover"));
}
