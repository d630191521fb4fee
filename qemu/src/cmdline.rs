//! The image's kernel command line: space-separated `key=value` words.

use std::fmt;

/// Default TCP port of the image's status service (`status_port=`).
pub const DEFAULT_STATUS_PORT: u16 = 8100;

/// An ordered list of `key=value` words; setting a key again replaces it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCmdline {
    words: Vec<(String, Option<String>)>,
}

impl KernelCmdline {
    pub fn new() -> Self {
        Self::default()
    }

    /// Splits a command line into words; a word without `=` is kept as is
    /// (the image will reject it, which is the point of passing it on).
    pub fn parse(text: &str) -> Self {
        let mut cmdline = Self::new();
        for word in text.split_whitespace() {
            match word.split_once('=') {
                Some((key, value)) => cmdline.push(key, Some(value.to_string())),
                None => cmdline.push(word, None),
            }
        }
        cmdline
    }

    fn push(&mut self, key: &str, value: Option<String>) {
        match self.words.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.words.push((key.to_string(), value)),
        }
    }

    /// Sets `key=value`, replacing an earlier value of `key`.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.push(key, Some(value.into()));
        self
    }

    /// Builder form of [`set`](Self::set).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.set(key, value);
        self
    }

    /// Sets a bare word (no `=`), replacing an earlier value of `key`.
    pub fn set_bare(&mut self, key: &str) -> &mut Self {
        self.push(key, None);
        self
    }

    /// The words in order: `(key, Some(value))`, or `(word, None)` for a bare word.
    pub fn words(&self) -> impl Iterator<Item = (&str, Option<&String>)> {
        self.words.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.words
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The guest's status port as the image will read it: `None` when
    /// disabled (`status_port=0`) and the default when absent. A value the
    /// image will reject gives `None`: nothing will listen.
    pub fn status_port(&self) -> Option<u16> {
        match self.get("status_port") {
            None => Some(DEFAULT_STATUS_PORT),
            Some(v) => v.parse::<u16>().ok().filter(|&p| p != 0),
        }
    }

    /// The words with the value of `pair_key=` hidden: for printing.
    pub fn redacted(&self) -> String {
        let mut shown = self.clone();
        if shown.get("pair_key").is_some() {
            shown.set("pair_key", "<secret>");
        }
        shown.to_string()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

impl fmt::Display for KernelCmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.words.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match value {
                Some(value) => write!(f, "{key}={value}")?,
                None => f.write_str(key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_keys() {
        let mut c = KernelCmdline::parse("  net0=dhcp   log=debug ");
        assert_eq!(c.to_string(), "net0=dhcp log=debug");
        c.set("net0", "10.0.0.1/24,gw=10.0.0.254")
            .set("net1", "dhcp");
        assert_eq!(
            c.to_string(),
            "net0=10.0.0.1/24,gw=10.0.0.254 log=debug net1=dhcp"
        );
        assert_eq!(c.get("net0"), Some("10.0.0.1/24,gw=10.0.0.254"));
        assert_eq!(c.get("net2"), None);
    }

    #[test]
    fn bare_words_are_passed_on_unchanged() {
        let c = KernelCmdline::parse("quiet log=info");
        assert_eq!(c.to_string(), "quiet log=info");
        assert_eq!(c.get("quiet"), None);
    }

    #[test]
    fn status_port_follows_the_image_defaults() {
        assert_eq!(KernelCmdline::new().status_port(), Some(8100));
        assert_eq!(
            KernelCmdline::parse("status_port=9000").status_port(),
            Some(9000)
        );
        assert_eq!(KernelCmdline::parse("status_port=0").status_port(), None);
        assert_eq!(KernelCmdline::parse("status_port=x").status_port(), None);
        assert!(KernelCmdline::parse("").is_empty());
    }
}
