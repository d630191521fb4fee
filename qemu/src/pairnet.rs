//! The pair's Ethernet segments on this machine (needs root, `ip` from
//! iproute2).
//!
//! Everything lives in one network namespace made for the setup
//! ([`NetNames::netns`]): a bridge per segment (`fe`, `repl`) and a tap per
//! node NIC (`a-fe`, `a-repl`, `b-fe`, `b-repl`, `witness-fe`); QEMU runs
//! inside the namespace (`ip netns exec`). Two veth pairs leave it:
//!
//! - `tdh<tag>` ↔ `host` on `fe`: this machine's address on the front-end
//!   segment (the last host address, e.g. 10.77.0.254/24), so the portals
//!   are reachable from here — unless `--no-host-link`;
//! - `tdu<tag>` ↔ `user` on `fe`: with `--bridge BR`, `tdu<tag>` is enslaved
//!   to the user's bridge BR, putting the front-end segment on it.
//!
//! Nothing else on the machine is touched. Deleting the namespace removes
//! the bridges, the taps and both veth pairs.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};
use crate::layout::{
    FRONT_END_BRIDGE, HOST_PEER, NetNames, NodeName, PairLayout, REPLICATION_BRIDGE, USER_PEER,
    conflicting_route,
};

/// Runs `ip ARGS…` and returns its stdout.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::io("running ip (install iproute2)", e))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS ARGS…`
fn ip_in(netns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    ip(&all)
}

/// True when the namespace exists.
pub fn netns_exists(netns: &str) -> bool {
    Path::new("/run/netns").join(netns).exists()
}

/// True when a network interface of that name exists on this machine.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// What the segments connect to outside the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplinks {
    /// Give this machine an address on the front-end segment.
    pub host_link: bool,
    /// Attach the front-end segment to this existing bridge of the user's.
    pub user_bridge: Option<String>,
}

/// Checks, before anything is created, that the uplinks can be made.
pub fn check_uplinks(layout: &PairLayout, names: &NetNames, uplinks: &Uplinks) -> Result<()> {
    if uplinks.host_link {
        let routes = ip(&["-4", "route", "show"])?;
        if let Some(route) = conflicting_route(&routes, layout.front_end, &names.host_link) {
            return Err(Error::Setup(format!(
                "the front-end subnet {} overlaps a route of this machine ({route}); \
                 pick another with --front-end-net, or leave this machine off the \
                 segment with --no-host-link",
                layout.front_end
            )));
        }
    }
    if let Some(bridge) = &uplinks.user_bridge
        && !Path::new("/sys/class/net")
            .join(bridge)
            .join("bridge")
            .exists()
    {
        return Err(Error::Setup(format!(
            "--bridge {bridge}: no such bridge on this machine \
             (create it with `ip link add {bridge} type bridge`)"
        )));
    }
    Ok(())
}

/// Creates the namespace, bridges, taps and uplinks. On failure, removes
/// what it made.
pub fn create(layout: &PairLayout, names: &NetNames, uplinks: &Uplinks) -> Result<()> {
    check_uplinks(layout, names, uplinks)?;
    let result = build(layout, names, uplinks);
    if result.is_err() {
        let _ = destroy(names);
    }
    result
}

fn build(layout: &PairLayout, names: &NetNames, uplinks: &Uplinks) -> Result<()> {
    let ns = names.netns.as_str();
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    for bridge in [FRONT_END_BRIDGE, REPLICATION_BRIDGE] {
        ip_in(ns, &["link", "add", bridge, "type", "bridge"])?;
        ip_in(ns, &["link", "set", bridge, "up"])?;
    }
    for node in NodeName::ALL {
        for nic in 0..node.nic_count() {
            let tap = NetNames::tap(node, nic);
            ip_in(ns, &["tuntap", "add", "dev", &tap, "mode", "tap"])?;
            ip_in(ns, &["link", "set", &tap, "master", NetNames::bridge(nic)])?;
            ip_in(ns, &["link", "set", &tap, "up"])?;
        }
    }
    if uplinks.host_link {
        let link = names.host_link.as_str();
        ip(&[
            "link", "add", link, "type", "veth", "peer", "name", HOST_PEER, "netns", ns,
        ])?;
        ip_in(ns, &["link", "set", HOST_PEER, "master", FRONT_END_BRIDGE])?;
        ip_in(ns, &["link", "set", HOST_PEER, "up"])?;
        let address = layout.front_end.cidr(layout.host_address());
        ip(&["addr", "add", &address, "dev", link])?;
        ip(&["link", "set", link, "up"])?;
    }
    if let Some(bridge) = &uplinks.user_bridge {
        let link = names.user_link.as_str();
        ip(&[
            "link", "add", link, "type", "veth", "peer", "name", USER_PEER, "netns", ns,
        ])?;
        ip_in(ns, &["link", "set", USER_PEER, "master", FRONT_END_BRIDGE])?;
        ip_in(ns, &["link", "set", USER_PEER, "up"])?;
        ip(&["link", "set", link, "master", bridge])?;
        ip(&["link", "set", link, "up"])?;
    }
    Ok(())
}

/// Removes the namespace (with its bridges and taps) and both veth pairs.
/// Returns whether anything was there. Idempotent.
pub fn destroy(names: &NetNames) -> Result<bool> {
    let mut removed = false;
    if netns_exists(&names.netns) {
        ip(&["netns", "del", &names.netns])?;
        removed = true;
        // The veth ends outside go with the namespace, in the background:
        // wait for them, so that an `up` right after finds the names free.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while [&names.host_link, &names.user_link]
            .iter()
            .any(|link| link_exists(link))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    // Deleting the namespace deletes the veth ends inside it and so the
    // pairs; a half-made setup may have left an end outside.
    for link in [&names.host_link, &names.user_link] {
        if link_exists(link) {
            // The kernel removes the pair of a deleted namespace's veth end
            // in the background: it may vanish between the check and here.
            match ip(&["link", "del", link]) {
                Err(_) if !link_exists(link) => {}
                result => result.map(drop)?,
            }
            removed = true;
        }
    }
    Ok(removed)
}

/// Sets a link of the namespace up or down (a tap: a node's cable).
pub fn set_link(names: &NetNames, device: &str, up: bool) -> Result<()> {
    ip_in(
        &names.netns,
        &["link", "set", device, if up { "up" } else { "down" }],
    )
    .map(drop)
}

/// Makes a bridge port of the namespace an isolated port (it reaches only
/// non-isolated ports: the hosts' veths) or a normal one again.
pub fn set_port_isolated(names: &NetNames, port: &str, isolated: bool) -> Result<()> {
    let out = Command::new("bridge")
        .args(["-n", &names.netns, "link", "set", "dev", port, "isolated"])
        .arg(if isolated { "on" } else { "off" })
        .output()
        .map_err(|e| Error::io("running bridge (install iproute2)", e))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("bridge -n {} link set dev {port} isolated", names.netns),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
