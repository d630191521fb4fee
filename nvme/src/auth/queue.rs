//! One queue's DH-HMAC-CHAP transaction (controller side), driven by the
//! host's Authentication Send (messages in) and Authentication Receive
//! (messages out):
//!
//! ```text
//! Send Negotiate ─► Receive Challenge ─► Send Reply ─► Receive Success1 ─┬─► done
//!                                                                       └─► Send Success2 ─► done (bidirectional)
//! any error ─► Receive Failure1 ─► failed        host's Send Failure2 ─► failed
//! ```
//! A Negotiate restarts the transaction at any time (re-authentication).

use alloc::vec::Vec;

use super::crypto::{self, equal_in_constant_time};
use super::message::{self, AUTHID_DHCHAP, FailureReason, HostMessage};
use super::{DhGroup, DhchapHost, Drbg, HashId};

/// What the connection does after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The transaction goes on.
    Continue,
    /// The host is authenticated (and the controller, when asked).
    Authenticated {
        hash: HashId,
        group: DhGroup,
        bidirectional: bool,
    },
    /// Authentication failed; the queue must not be used.
    Failed(AuthFailure),
}

/// Why, for the one console line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The controller refused the host.
    Refused(FailureReason),
    /// The host refused the controller (its Failure2 explanation).
    HostRefused(u8),
}

impl core::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AuthFailure::Refused(r) => {
                write!(f, "the controller refused the host: {}", r.describe())
            }
            AuthFailure::HostRefused(e) => {
                write!(
                    f,
                    "the host refused the controller (explanation {e:#04x}, wrong controller secret?)"
                )
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for Negotiate.
    Negotiate,
    /// Waiting for the Receive of the Challenge.
    Challenge,
    /// Waiting for Reply.
    Reply,
    /// Waiting for the Receive of Success1.
    Success1,
    /// Waiting for Success2.
    Success2,
    /// Waiting for the Receive of Failure1.
    Failure1(FailureReason),
    /// Finished (authenticated or failed); a Negotiate starts again.
    Done,
}

/// The controller's preferences, most preferred first; the first one the
/// host offers is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    pub hashes: Vec<HashId>,
    pub groups: Vec<DhGroup>,
}

impl Default for Preferences {
    /// SHA-256 first (what every host offers); ffdhe2048 first (forward
    /// secrecy at the lowest cost), null last.
    fn default() -> Self {
        Preferences {
            hashes: alloc::vec![HashId::Sha256, HashId::Sha384, HashId::Sha512],
            groups: alloc::vec![
                DhGroup::Ffdhe2048,
                DhGroup::Ffdhe3072,
                DhGroup::Ffdhe4096,
                DhGroup::Ffdhe6144,
                DhGroup::Ffdhe8192,
                DhGroup::Null
            ],
        }
    }
}

/// Who authenticates to whom, for one queue.
pub struct AuthContext<'a> {
    pub host: &'a DhchapHost,
    pub subsys_nqn: &'a str,
    pub prefs: &'a Preferences,
}

/// The transaction state of one queue.
pub struct QueueAuth {
    step: Step,
    tid: u16,
    hash: HashId,
    group: DhGroup,
    c1: Vec<u8>,
    s1: u32,
    private: Vec<u8>,
    session_key: Option<Vec<u8>>,
    c2: Option<Vec<u8>>,
    s2: u32,
    authenticated: bool,
}

impl core::fmt::Debug for QueueAuth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QueueAuth")
            .field("step", &self.step)
            .field("tid", &self.tid)
            .field("authenticated", &self.authenticated)
            .finish_non_exhaustive()
    }
}

impl Default for QueueAuth {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueAuth {
    pub fn new() -> QueueAuth {
        QueueAuth {
            step: Step::Negotiate,
            tid: 0,
            hash: HashId::Sha256,
            group: DhGroup::Null,
            c1: Vec::new(),
            s1: 0,
            private: Vec::new(),
            session_key: None,
            c2: None,
            s2: 0,
            authenticated: false,
        }
    }

    /// Whether the host has authenticated on this queue (commands other than
    /// Authentication Send/Receive are served).
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether a transaction is under way (started and not finished).
    pub fn in_progress(&self) -> bool {
        !matches!(self.step, Step::Negotiate | Step::Done)
    }

    fn fail(&mut self, reason: FailureReason) -> AuthOutcome {
        self.forget();
        self.step = Step::Failure1(reason);
        AuthOutcome::Continue
    }

    /// Drops the per-transaction secrets.
    fn forget(&mut self) {
        self.c1.clear();
        self.private.iter_mut().for_each(|b| *b = 0);
        self.private.clear();
        if let Some(k) = self.session_key.as_mut() {
            k.iter_mut().for_each(|b| *b = 0);
        }
        self.session_key = None;
        self.c2 = None;
    }

    /// An Authentication Send payload from the host.
    pub fn on_send(&mut self, data: &[u8], ctx: &AuthContext<'_>) -> AuthOutcome {
        let msg = match HostMessage::parse(data) {
            Ok(m) => m,
            Err(reason) => return self.fail(reason),
        };
        match msg {
            HostMessage::Negotiate {
                tid,
                sc_c,
                hashes,
                groups,
                descriptors,
                authid,
            } => {
                // Starts (or restarts: re-authentication) a transaction.
                self.forget();
                self.tid = tid;
                if sc_c != 0 {
                    return self.fail(FailureReason::ConcatMismatch);
                }
                if descriptors != 1 {
                    return self.fail(FailureReason::HashUnusable);
                }
                if authid != AUTHID_DHCHAP {
                    return self.fail(FailureReason::IncorrectPayload);
                }
                let Some(hash) = ctx
                    .prefs
                    .hashes
                    .iter()
                    .copied()
                    .find(|h| hashes.contains(&(*h as u8)))
                else {
                    return self.fail(FailureReason::HashUnusable);
                };
                let Some(group) = ctx
                    .prefs
                    .groups
                    .iter()
                    .copied()
                    .find(|g| groups.contains(&(*g as u8)))
                else {
                    return self.fail(FailureReason::DhGroupUnusable);
                };
                self.hash = hash;
                self.group = group;
                self.step = Step::Challenge;
                AuthOutcome::Continue
            }
            HostMessage::Reply {
                tid,
                hl,
                cvalid,
                seqnum,
                response,
                challenge,
                dh_value,
            } => {
                if self.step != Step::Reply {
                    return self.fail(FailureReason::IncorrectMessage);
                }
                if tid != self.tid || hl as usize != self.hash.digest_len() {
                    return self.fail(FailureReason::IncorrectPayload);
                }
                match self.group {
                    DhGroup::Null if !dh_value.is_empty() => {
                        return self.fail(FailureReason::IncorrectPayload);
                    }
                    DhGroup::Null => {}
                    g => {
                        if dh_value.len() != g.value_len() {
                            return self.fail(FailureReason::IncorrectPayload);
                        }
                        match g.shared_secret(dh_value, &self.private) {
                            Some(k) => self.session_key = Some(k),
                            None => return self.fail(FailureReason::DhGroupUnusable),
                        }
                    }
                }
                let host = ctx.host;
                let key = host.host_secret.key_for(&host.host_nqn);
                let ca =
                    crypto::augmented_challenge(self.hash, self.session_key.as_deref(), &self.c1);
                let expected = crypto::host_response(
                    self.hash,
                    &key,
                    &ca,
                    self.s1,
                    self.tid,
                    &host.host_nqn,
                    ctx.subsys_nqn,
                );
                if !equal_in_constant_time(&expected, response) {
                    return self.fail(FailureReason::Failed);
                }
                // SEQNUM 0 with a challenge only feeds a secure channel's PSK
                // (not supported): not a request to authenticate the controller.
                if cvalid && seqnum != 0 {
                    if host.ctrl_secret.is_none() {
                        return self.fail(FailureReason::Failed);
                    }
                    self.c2 = Some(challenge.to_vec());
                    self.s2 = seqnum;
                }
                self.step = Step::Success1;
                AuthOutcome::Continue
            }
            HostMessage::Success2 { tid } => {
                if self.step != Step::Success2 {
                    return self.fail(FailureReason::IncorrectMessage);
                }
                if tid != self.tid {
                    return self.fail(FailureReason::IncorrectPayload);
                }
                self.step = Step::Done;
                self.authenticated = true;
                self.forget();
                AuthOutcome::Authenticated {
                    hash: self.hash,
                    group: self.group,
                    bidirectional: true,
                }
            }
            HostMessage::Failure2 { explanation, .. } => {
                self.step = Step::Done;
                self.authenticated = false;
                self.forget();
                AuthOutcome::Failed(AuthFailure::HostRefused(explanation))
            }
        }
    }

    /// An Authentication Receive: the controller's next message (at most
    /// `max_len` bytes are wanted; the caller pads to the allocation length).
    pub fn on_receive(&mut self, ctx: &AuthContext<'_>, rng: &mut Drbg) -> (Vec<u8>, AuthOutcome) {
        match self.step {
            Step::Challenge => {
                let mut c1 = alloc::vec![0u8; self.hash.digest_len()];
                rng.fill(&mut c1);
                // S1: never 0 (0 means "no sequence number" in a Reply).
                self.s1 = rng.next_u32().max(1);
                let public = if self.group == DhGroup::Null {
                    Vec::new()
                } else {
                    let mut x = alloc::vec![0u8; self.group.private_len()];
                    rng.fill(&mut x);
                    let Some(y) = self.group.public_value(&x) else {
                        return self.failure_now(FailureReason::DhGroupUnusable);
                    };
                    self.private = x;
                    y
                };
                let m = message::challenge(
                    self.tid,
                    self.hash as u8,
                    self.group as u8,
                    self.s1,
                    &c1,
                    &public,
                );
                self.c1 = c1;
                self.step = Step::Reply;
                (m, AuthOutcome::Continue)
            }
            Step::Success1 => {
                let host = ctx.host;
                let r2 = match (&self.c2, &host.ctrl_secret) {
                    (Some(c2), Some(secret)) => {
                        let key = secret.key_for(ctx.subsys_nqn);
                        let ca =
                            crypto::augmented_challenge(self.hash, self.session_key.as_deref(), c2);
                        Some(crypto::controller_response(
                            self.hash,
                            &key,
                            &ca,
                            self.s2,
                            self.tid,
                            ctx.subsys_nqn,
                            &host.host_nqn,
                        ))
                    }
                    _ => None,
                };
                let m = message::success1(self.tid, self.hash.digest_len(), r2.as_deref());
                if r2.is_some() {
                    self.step = Step::Success2;
                    self.forget();
                    (m, AuthOutcome::Continue)
                } else {
                    self.step = Step::Done;
                    self.authenticated = true;
                    self.forget();
                    (
                        m,
                        AuthOutcome::Authenticated {
                            hash: self.hash,
                            group: self.group,
                            bidirectional: false,
                        },
                    )
                }
            }
            Step::Failure1(reason) => self.failure_now(reason),
            // A Receive out of order.
            Step::Negotiate | Step::Reply | Step::Success2 | Step::Done => {
                self.failure_now(FailureReason::IncorrectMessage)
            }
        }
    }

    fn failure_now(&mut self, reason: FailureReason) -> (Vec<u8>, AuthOutcome) {
        self.forget();
        self.step = Step::Done;
        self.authenticated = false;
        (
            message::failure1(self.tid, reason),
            AuthOutcome::Failed(AuthFailure::Refused(reason)),
        )
    }
}
