//! A network namespace that holds the guests' networks, so nothing they send
//! reaches the host's interfaces. Needs root (`ip netns add`).

use crate::error::{Error, Result};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "tandem-lg-";

/// A namespace `tandem-lg-<pid>-<n>`, deleted on drop. Its `lo` is up with
/// multicast on, so [`crate::NetBackend::Mcast`] segments work inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Created here, so deleted on drop.
    owned: bool,
}

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| Error::io(format!("running {}", args[0]), e))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    /// Creates a fresh namespace (and deletes ones left by dead processes).
    pub fn create() -> Result<Netns> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["link", "set", "lo", "multicast", "on"])?;
        Ok(ns)
    }

    /// A namespace made by someone else (e.g. where a tandem image runs):
    /// used as it is, never deleted.
    pub fn existing(name: &str) -> Result<Netns> {
        run(&["ip", "netns", "exec", name, "true"])?;
        Ok(Netns {
            name: name.to_string(),
            owned: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ARGS…`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Adds a bridge (a switch for taps), up.
    pub fn add_bridge(&self, bridge: &str) -> Result<()> {
        self.ip(&["link", "add", bridge, "type", "bridge"])?;
        self.ip(&["link", "set", bridge, "up"])?;
        Ok(())
    }

    /// Adds a tap for a guest NIC ([`crate::NetBackend::Tap`]), up and
    /// enslaved to `bridge` if given.
    pub fn add_tap(&self, tap: &str, bridge: Option<&str>) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        if let Some(br) = bridge {
            self.ip(&["link", "set", tap, "master", br])?;
        }
        self.ip(&["link", "set", tap, "up"])?;
        Ok(())
    }

    /// Sets a link (a tap: the guest's cable) up or down.
    pub fn set_link(&self, dev: &str, up: bool) -> Result<()> {
        self.ip(&["link", "set", dev, if up { "up" } else { "down" }])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = run(&["ip", "netns", "del", &self.name]);
        }
    }
}

/// Deletes `tandem-lg-<pid>-<n>` namespaces whose process is gone.
fn remove_stale() {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}
