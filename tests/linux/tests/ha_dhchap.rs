//! NVMe in-band authentication through both nodes of a pair: both take the
//! same `dhchap=` keys; the Linux 6.12 host (Debian 13 guest) connects to
//! both portals with `--dhchap-secret` and `--dhchap-ctrl-secret`
//! (bidirectional), runs fio and the acknowledged-write checker, and keeps
//! running across a planned switchover; both nodes authenticated it (admin
//! and I/O queues), neither refused it, and no secret is on a console.
//! Needs root; ~4 min under TCG.

use tandem_linux_guest::Release;
use tandem_linux_guest::cluster::{Cluster, ClusterOptions, HOST_NQN, Name, lock};
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
